"""The shared backbone MLM: the dvc stage `mlm` (`repro mlm`) and its on-demand build by `repro run`.

`repro mlm` trains it (params `mlm.profiles.<profile>`, `common.text.mlm.train_mlm`) into `out_dir`
(git-ignored: a 90 MB model, not a DVC output) and writes its report to reports/mlm/<profile>.json
(committed). The report's `weights_sha256` is the MLM's identity: the report is the stage's DVC output
and a dep of the text run stages, so a fresh clone with complete committed results rebuilds nothing.
A `repro run` with a text run to do and no MLM weights on disk builds them first (`ensure_mlm`) and
says whether their hash matches the committed report's (it does for the same code on the same CPU
kind: pinned threads, deterministic kernels); every text result records the hash of the MLM it used.
"""
from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from common.config import config_hash, data_mirror
from common.errors import ConfigError, ReproError
from common.io import write_json_atomic
from common.run.progress import eta_text, progress_enabled
from common.run.results import RunKey, made_by_dirty_code, read_result, result_status

log = logging.getLogger("repro.mlm")
REPORTS_DIR = Path("reports/mlm")


def mlm_params(params: dict, profile: str) -> dict:
    """The validated `mlm.profiles.<profile>` block (shared by every paper's text augmenters), defaults filled."""
    from common.config_models import MlmProfile, parse
    where = f"params.yaml: mlm.profiles.{profile}"
    cfg = (params.get("mlm") or {}).get("profiles", {}).get(profile)
    if cfg is None:
        raise ReproError(f"{where}: missing (expected the keys {sorted(MlmProfile.model_fields)})")
    return parse(MlmProfile, cfg, where).model_dump()


def committed_report_path(profile: str, reports_dir: Path = REPORTS_DIR) -> Path:
    return Path(reports_dir) / f"{profile}.json"


def build_mlm(params: dict, profile: str, *, overwrite: bool = False, say: Callable[[str], None] = print) -> dict:
    """Train the profile's MLM into its out_dir (`common.text.mlm.train_mlm`); returns its report.
    Progress: one line per evaluation with elapsed time and ETA (none in CI, see common.run.progress)."""
    from common.text.backbones import backbone_dir
    from common.text.mlm import mlm_corpus, train_mlm
    from pipelines.grid import text_dev_pools

    cfg = mlm_params(params, profile)
    backbone_dir(cfg["backbone"])     # a missing or unknown backbone fails before the corpus is read
    datasets = tuple(cfg["datasets"])
    pools = text_dev_pools(params, profile)
    train, dev = mlm_corpus(data_mirror(params["base"]), datasets, held_out_pools=pools,
                            imdb_limit=cfg["imdb_limit"], seed=cfg["seed"])
    say(f"mlm ({profile}): {cfg['backbone']}, {len(train)} train / {len(dev)} dev texts, {cfg['steps']} steps, "
        f"{cfg['threads']} threads")
    start, show = time.time(), progress_enabled()

    def on_log(record: dict) -> None:
        if not show and record["step"] not in (0, cfg["steps"]):
            return
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.3f}"
        say(f"mlm step {record['step']}/{cfg['steps']}: train loss {train_loss}, dev loss {record['dev_loss']:.3f} "
            f"({eta_text(record['step'], cfg['steps'], time.time() - start)})")

    return train_mlm(cfg["backbone"], train, dev, cfg["out_dir"], steps=cfg["steps"], batch_size=cfg["batch_size"],
                     lr=cfg["lr"], max_seq_len=cfg["max_seq_len"], seed=cfg["seed"], threads=cfg["threads"],
                     on_log=on_log, overwrite=overwrite,
                     report_extra={"profile": profile, "datasets": list(datasets), "imdb_limit": cfg["imdb_limit"],
                                   "held_out_pools": {k: [list(p) for p in v] for k, v in pools.items()}})


def publish_mlm_report(out_dir: str | Path, profile: str, reports_dir: Path = REPORTS_DIR) -> Path:
    """Copy the MLM's report (small JSON: dev loss, fills, held-out pools, weights_sha256) to
    reports/mlm/<profile>.json, the committed identity of the MLM behind the text results."""
    from common.text.mlm import REPORT_NAME

    target = committed_report_path(profile, reports_dir)
    write_json_atomic(target, json.loads((Path(out_dir) / REPORT_NAME).read_text()))
    return target


def committed_weights_sha256(profile: str, reports_dir: Path = REPORTS_DIR) -> str | None:
    path = committed_report_path(profile, reports_dir)
    return json.loads(path.read_text()).get("weights_sha256") if path.is_file() else None


def pending_mlm_dirs(configs: list[dict], results_dir: Path, replace_dirty: bool = False) -> set[str]:
    """The MLM folders that runs without a finished result (same config hash) will read; with
    `replace_dirty` also those of results that uncommitted code made (they will be re-run)."""
    pending = set()
    for c in configs:
        if not c.get("mlm_dir") or "requires" in c:
            continue
        path = RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"]).path(results_dir, c["profile"])
        try:
            done = result_status(path, config_hash(c)) == "done"
            done = done and not (replace_dirty and made_by_dirty_code(read_result(path)))
        except ReproError:
            done = False            # a stale result: the run would be repeated (--replace-changed)
        if not done:
            pending.add(c["mlm_dir"])
    return pending


def ensure_mlm(params: dict, profile: str, configs: list[dict], results_dir: Path,
               reports_dir: Path = REPORTS_DIR, replace_dirty: bool = False) -> str | None:
    """Build the profile's MLM if a run still to do needs it and its weights are missing; returns a
    sentence on the MLM's identity (or None when nothing needs it). Concurrent callers build once (a
    file lock beside out_dir). The committed report is left as it is: it names the MLM behind the
    committed results, and the built MLM is compared with it."""
    from common.text.mlm import mlm_weights_sha256

    needed = pending_mlm_dirs(configs, results_dir, replace_dirty)
    if not needed:
        return None
    cfg = mlm_params(params, profile)
    for mlm_dir in sorted(needed):
        if Path(mlm_dir).resolve() != Path(cfg["out_dir"]).resolve():
            if mlm_weights_sha256(mlm_dir) is None:
                raise ConfigError(f"mlm_dir {mlm_dir}: holds no MLM ({Path(mlm_dir) / 'model.safetensors'} missing) "
                                  "and "
                                  f"is not mlm.profiles.{profile}.out_dir ({cfg['out_dir']}), which `repro run` "
                                  "builds on demand; point mlm_dir there or train this MLM yourself")
            continue
        out_dir = Path(cfg["out_dir"])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if mlm_weights_sha256(out_dir) is None:
                log.warning("text runs need the MLM and %s holds none: building it (dvc stage mlm's model)", out_dir)
                build_mlm(params, profile, overwrite=True, say=lambda line: log.warning("%s", line))
    built = mlm_weights_sha256(cfg["out_dir"])
    committed = committed_weights_sha256(profile, reports_dir)
    if committed is None:
        return f"MLM {built[:12]} (no committed MLM report for profile {profile} to compare with)"
    if built == committed:
        return f"MLM {built[:12]}: identical to the committed one ({committed_report_path(profile, reports_dir)})"
    message = (f"MLM {built[:12]} differs from the committed one ({committed[:12]}, "
               f"{committed_report_path(profile, reports_dir)}): another CPU kind, thread count or code. New text "
               "results record the MLM they used (mlm.weights_sha256); compare cells, not single seeds")
    log.warning("%s", message)
    return message
