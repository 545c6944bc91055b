"""The data of mmel's GLUE tables (Sec. 3.3, 4.2): train subsets, the MLM, augmented views, teacher outputs.

Built once per (profile, task) and kept under `artifacts/mmel/<profile>/` (git-ignored, like the hu19
MLM): a run that finds them missing builds them first (a file lock makes concurrent workers build once),
and `repro prepare --paper mmel` (dvc stage prepare_mmel) builds them for every text run up front.
Every artifact records the identity of what it was made from, and a reader checks it:

1. **MLM** (`ensure_mlm`): the backbone fine-tuned with masked LM (`common.text.mlm.train_mlm`, the code
   of the shared hu19 MLM) on the GLUE train pools only (`glue_mlm_corpus`): the sentences of CoLA, RTE,
   MRPC (its drawn dev rows excluded) and STS-B train, each sentence of a pair on its own (Alg. 2 augments
   them separately), every text equal to a dev or test text dropped. Choice: mmel trains its own MLM with
   that corpus instead of adding GLUE to hu19's shared MLM: the hu19 text results record their MLM's
   hash, so a shared corpus would make an mmel change re-run hu19 (params are grouped per paper so that
   editing one paper never re-runs another). bert-base-uncased (paper profile) has its own MLM head:
   `mlm.steps: 0` keeps it as it is.
2. **Views** (`ensure_views`): |B| - 1 greedy-MLM views of every train example (Alg. 2,
   `papers.mmel.text_views`), mask ratio 0.4, the two sentences of a pair separately (Table 6's default).
   Generated once and fixed for all epochs and seeds (the paper generates them once, "offline").
3. **Teacher** (`ensure_teacher`): the task model fine-tuned on the original train subset (no views,
   the `baseline` recipe, seed 0), then its outputs on every view: class probabilities (classification)
   or the predicted score (STS-B). Sec. 3.3 uses a BERT-base teacher; each profile's teacher is its own
   backbone (MiniLM on cpu), trained on the same train subset as the students (a teacher trained on the
   whole train set would give the students labels from data they do not see).
"""
from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.config import config_hash
from common.data.glue import GLUE_LOADERS, TASKS
from common.errors import ConfigError, DataError
from common.io import write_json_atomic, write_or_check_split_file
from common.text.mlm import REPORT_NAME, mlm_weights_sha256, train_mlm

log = logging.getLogger("repro.mmel")
ARTIFACTS_DIR = Path("artifacts/mmel")
GLUE_TASKS = tuple(TASKS)            # cola, rte, mrpc, stsb
PAIR_TASKS = tuple(t for t in GLUE_TASKS if len(TASKS[t].fields) == 2)
REGRESSION_TASKS = tuple(t for t in GLUE_TASKS if TASKS[t].regression)


def is_pair_task(task: str) -> bool:
    return task in PAIR_TASKS


def num_outputs(task: str) -> int:
    """Classifier outputs: 1 (a score) for STS-B, 2 classes for the others."""
    return 1 if task in REGRESSION_TASKS else 2


def load_task(task: str, mirror: str | None) -> dict:
    if task not in GLUE_LOADERS:
        raise ConfigError(f"GLUE task {task!r}: expected one of {sorted(GLUE_LOADERS)}")
    return GLUE_LOADERS[task](mirror)


def train_rows(n_train: int, limit: int | None, data_seed: int) -> np.ndarray:
    """The train rows a profile uses: all (limit None), else `limit` rows drawn by a seeded permutation
    (numpy default_rng(data_seed)), sorted (file order kept)."""
    if limit is None or limit >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(data_seed).permutation(n_train)[:limit])


def write_split(path: Path, config: dict, n_train: int) -> np.ndarray:
    """Write (or check) the split index file of a text run: the train rows it trains on."""
    rows = train_rows(n_train, config["train_limit"], config["data_seed"])
    payload = {"task": config["task"], "train_limit": config["train_limit"], "data_seed": config["data_seed"],
               "train": rows.tolist()}
    write_or_check_split_file(Path(path), payload, differs="split file differs from the one this config defines "
                              "(task, train_limit, data_seed or the rows); delete it to rebuild it, or restore the "
                              "config")
    return rows


# -------------------------------------------------------------------------------------------- MLM
def glue_mlm_corpus(mirror: str | None, tasks=GLUE_TASKS, dev_fraction: float = 0.02,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_texts, dev_texts) of the mmel MLM: deduplicated sentences of the tasks' train pools, never
    a text equal to any dev/test sentence; a seeded `dev_fraction` is the MLM's own dev set."""
    texts, held_out = [], set()
    clean = lambda s: " ".join(str(s).split())
    sentences = lambda x: [s for row in x for s in (row if isinstance(row, tuple) else (row,))]
    for task in tasks:
        splits = load_task(task, mirror)
        for split, (x, _) in splits.items():
            if split == "train":
                texts.extend(clean(s) for s in sentences(x))
            else:
                held_out.update(clean(s) for s in sentences(x))
    texts = [t for t in dict.fromkeys(texts) if t and t not in held_out]
    rng = np.random.default_rng(seed)
    dev = np.zeros(len(texts), dtype=bool)
    dev[rng.permutation(len(texts))[:max(1, round(dev_fraction * len(texts)))]] = True
    return [t for t, d in zip(texts, dev) if not d], [t for t, d in zip(texts, dev) if d]


def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.parent / f".{path.name}.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def ensure_mlm(mlm: dict, mirror: str | None, say: Callable[[str], None] = log.warning) -> str:
    """The mmel MLM folder (`mlm.out_dir`), trained first if it holds none; returns its weights sha256."""
    out_dir = Path(mlm["out_dir"])
    with _locked(out_dir):
        if mlm_weights_sha256(out_dir) is None:
            train, dev = glue_mlm_corpus(mirror, seed=mlm["seed"])
            say(f"mmel MLM: {mlm['backbone']} on {len(train)} GLUE train sentences ({len(dev)} dev), "
                f"{mlm['steps']} steps -> {out_dir}")
            train_mlm(mlm["backbone"], train, dev, out_dir, steps=mlm["steps"], batch_size=mlm["batch_size"],
                      lr=mlm["lr"], max_seq_len=mlm["max_seq_len"], seed=mlm["seed"], threads=mlm["threads"],
                      overwrite=True, report_extra={"corpus": "GLUE train pools (cola, rte, mrpc, stsb)"})
    return mlm_weights_sha256(out_dir)


def mlm_report(mlm: dict) -> dict:
    return json.loads((Path(mlm["out_dir"]) / REPORT_NAME).read_text())


# ------------------------------------------------------------------------------------------ views
def artifact_dir(config: dict) -> Path:
    return ARTIFACTS_DIR / config["profile"] / config["task"]


def artifact_path(config: dict, kind: str, meta: dict) -> Path:
    """`<artifact_dir>/<kind>_b<|B|>-<hash of meta>.json`: one file per config that made it, so editing
    a recipe key (e.g. the teacher's `lr`) builds a new file beside the old one instead of failing
    mid-grid on it, and an old file is never overwritten."""
    return artifact_dir(config) / f"{kind}_b{config['num_views']}-{config_hash(meta)[:12]}.json"


def views_meta(config: dict, mlm_sha: str) -> dict:
    return {"task": config["task"], "train_limit": config["train_limit"], "data_seed": config["data_seed"],
            "num_views": config["num_views"], "mask_ratio": config["mask_ratio"], "mlm_sha256": mlm_sha,
            "max_seq_len": config["max_seq_len"], "seed": config["views_seed"]}


def ensure_views(config: dict, x_train: list, mirror: str | None) -> tuple[list[list], str]:
    """The |B| - 1 views of every train example (in row order) and the MLM hash they come from."""
    from papers.mmel.text_views import augment_task, read_views, write_views
    mlm_sha = ensure_mlm(config["mlm"], mirror)
    meta = {**views_meta(config, mlm_sha), "n": len(x_train)}
    path = artifact_path(config, "views", meta)
    with _locked(path):
        if not path.is_file():
            from common.text.backbones import load_tokenizer
            from common.text.mlm import load_mlm_model
            backbone = config["mlm"]["backbone"]
            model = load_mlm_model(backbone, config["mlm"]["out_dir"])
            log.warning("mmel views: %d %s train examples x %d views (greedy MLM, Alg. 2) -> %s",
                        len(x_train), config["task"], config["num_views"] - 1, path)
            views = augment_task(x_train, model, load_tokenizer(backbone), num_views=config["num_views"],
                                 mask_ratio=config["mask_ratio"], seed=config["views_seed"],
                                 max_seq_len=config["max_seq_len"])
            write_views(path, views, meta)
        return read_views(path, meta), mlm_sha


# ---------------------------------------------------------------------------------------- teacher
def teacher_meta(config: dict, views_sha: str) -> dict:
    keys = ("task", "backbone", "pooling", "train_limit", "data_seed", "max_seq_len", "batch_size", "lr",
            "weight_decay", "warmup", "teacher_epochs", "num_views", "mask_ratio")
    return {**{k: config[k] for k in keys}, "views_mlm_sha256": views_sha, "seed": 0}


def ensure_teacher(config: dict, train_fn: Callable[[], dict], views_sha: str) -> tuple[np.ndarray, float]:
    """(teacher outputs on every view, the teacher's dev score): [N, |B| - 1, C] probabilities or
    [N, |B| - 1] scores; `train_fn`
    trains the teacher (the baseline recipe, seed 0) and returns {"outputs": array, "dev_score": float}."""
    meta = teacher_meta(config, views_sha)
    path = artifact_path(config, "teacher", meta)
    with _locked(path):
        if not path.is_file():
            log.warning("mmel teacher: fine-tuning %s on %s (%d epochs) -> %s", config["backbone"], config["task"],
                        config["teacher_epochs"], path)
            made = train_fn()
            write_json_atomic(path, {"meta": meta, "dev_score": made["dev_score"],
                                     "outputs": np.asarray(made["outputs"]).tolist()})
        stored = json.loads(path.read_text())
    if stored.get("meta") != meta:
        diff = sorted(k for k in {**meta, **stored.get("meta", {})} if stored.get("meta", {}).get(k) != meta.get(k))
        raise DataError(f"{path}: teacher outputs made for another config (differs in {diff}; the file name's "
                        "hash is of this config's, so the file was copied or edited); delete the file to rebuild it")
    outputs = np.asarray(stored["outputs"], dtype=np.float32)
    expected = (config["n_train"], config["num_views"] - 1)
    if outputs.shape[:2] != expected:
        raise DataError(f"{path}: teacher outputs of shape {outputs.shape}, expected {expected} (+ classes)")
    return outputs, float(stored["dev_score"])


def teacher_tensor(outputs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(outputs))
