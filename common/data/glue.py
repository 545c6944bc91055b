"""Four small GLUE tasks of the mmel text tables: CoLA, RTE, MRPC, STS-B.

Reads `$REPRO_DATA_MIRROR/glue/{cola,rte,mrpc,stsb}/*.jsonl` (the mirror root is the `mirror`
argument, i.e. `base.data_mirror` or REPRO_DATA_MIRROR, as for every dataset) after verifying every
file of the task's folder against the sha256 recorded below (from `glue/PROVENANCE.md`). There is
no download fallback: the mirror's MRPC is the original MSR split, not the hub's GLUE split, so a
hub copy would silently be different data; without a mirror the loaders raise DataError.

Every loader returns `{split: (x, y)}`, the shape of the other text loaders:
- x: `list[str]` for CoLA (one sentence), `list[tuple[str, str]]` (sentence1, sentence2) for
  RTE, MRPC and STS-B;
- y: int64 labels for CoLA (1 acceptable, 0 unacceptable), RTE (0 entailment, 1 not_entailment)
  and MRPC (1 paraphrase, 0 not); float64 similarity scores in [0, 5] for STS-B.

Splits (counts checked against PROVENANCE.md on every load):
- CoLA: train 8551 / dev 1043 / test_unlabeled 1063.
- RTE: train 2490 / dev 277 / test_unlabeled 3000.
  The CoLA and RTE test sets have no labels: they are exposed only under the key
  `test_unlabeled`, with every label UNLABELED (-1), never as `test`; `glue_metrics` refuses
  label -1, so they cannot be scored by mistake. They are there so that, e.g., an MLM corpus can
  hold their texts out.
- MRPC: train 3668 / dev 408 / test 1725 (test labelled). The mirror is the original MSR split
  (train 4076, test 1725, which is GLUE's test); GLUE's dev ids are not available, so the dev set
  is drawn from the 4076 train pairs by `mrpc_dev_mask`: MRPC_DEV_SIZE = 408 pairs (GLUE's dev
  size), class-stratified (per-class sizes by largest remainder of 408 * class share: 132
  negatives, 276 positives), drawn with `random.Random(MRPC_DEV_SEED)` (MRPC_DEV_SEED = 2021),
  classes in order 0, 1, each class's rows (in file order) shuffled and the first n kept. Train is
  the other 3668 pairs; both keep file order. This is NOT GLUE's dev split: numbers on it are
  not comparable to published GLUE dev numbers pair for pair.
- STS-B: train 5749 / dev 1500 / test 1379 (the benchmark's test, labelled; GLUE's has no labels).

A record missing a field, with a field of the wrong type or a label out of range is a DataError
naming the file, the line number and the field. Nothing is cached: the files are small (< 1 s).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.mirror import verify_file
from common.errors import DataError

Splits = dict[str, tuple[list, np.ndarray]]

GLUE_FOLDER = "glue"
UNLABELED = -1                 # label of every row of an unlabelled test file
MRPC_DEV_SIZE = 408            # GLUE's MRPC dev size
MRPC_DEV_SEED = 2021           # fixed seed of the MRPC dev draw (arbitrary; never varied with the run seed)
STSB_RANGE = (0.0, 5.0)

# sha256 of the mirror files (paths relative to glue/), from glue/PROVENANCE.md.
GLUE_SHA256 = {
    "cola/train.jsonl": "481ecf2105c59840ccbe47db35d5c461554944aa8f7266de99f447827d20df51",
    "cola/dev.jsonl": "4419d545597eaa308bd596646c800719fe80a11b44bc6daaecbe998e87ea570d",
    "cola/test_unlabeled.jsonl": "0cd4ead0bb02df3db214d00ab118ce4586f9c309f6a535393faca2494d2861b3",
    "rte/train.jsonl": "4a0f68451bf8e87c0020e2a694675cffbb7aa8c91ab4e5572bcfb76e843877be",
    "rte/dev.jsonl": "aabcfc66a9822029cf4b38ff3e6d0d78f7e0fecd5232ca008f338e6c4f657eb1",
    "rte/test_unlabeled.jsonl": "cb39da571815b91ec331a908971a3bc083fdea4fc0f910fbe337bb1ee356474a",
    "mrpc/train.jsonl": "d3f0cbe7ecc5459fe545e17d302356b7ffb389e6dc3ab033793e979659fcad2d",
    "mrpc/test.jsonl": "17ea285ee5cf9a0042fd0e4104dfa4c405294c5afb165d99d7ac424b072d670d",
    "stsb/train.jsonl": "d891e70844a14c7feda6d3412a9dbe123595f2d80b8a0c114cdc86e103898e51",
    "stsb/dev.jsonl": "2ea8970ce9831408bb1b477038ca7ddfec2c3330195c971b11dea96dd6f49600",
    "stsb/test.jsonl": "f41831940ec714b932ecf930ac20b653b2ed6c4c8a7fe98c737842035e66c594",
    "stsb/LICENSE.txt": "3dfc3217395f8c5dd05c5f8995f25fe2f8fd258e6dd770b3de480749caee8c70",
    "stsb/readme.txt": "e9488363d211c32ca5e912954f16eb9233cfed1b5b4b0475d0d812d35d7c8ef1",
}


@dataclass(frozen=True)
class GlueTask:
    """One task: mirror sub-folder, text fields, label kind and the expected counts per file."""

    name: str                          # as written in messages, e.g. "STS-B"
    folder: str                        # sub-folder of glue/
    fields: tuple[str, ...]            # ("sentence",) or ("sentence1", "sentence2")
    regression: bool                   # float scores in STSB_RANGE instead of int classes 0/1
    # split file (without .jsonl) -> per-class counts (classes 0, 1), or the row count for
    # regression and unlabelled files
    counts: dict[str, tuple[int, ...] | int]


COLA = GlueTask("CoLA", "cola", ("sentence",), False,
                {"train": (2528, 6023), "dev": (322, 721), "test_unlabeled": 1063})
RTE = GlueTask("RTE", "rte", ("sentence1", "sentence2"), False,
               {"train": (1249, 1241), "dev": (146, 131), "test_unlabeled": 3000})
MRPC = GlueTask("MRPC", "mrpc", ("sentence1", "sentence2"), False,
                {"train": (1323, 2753), "test": (578, 1147)})
STSB = GlueTask("STS-B", "stsb", ("sentence1", "sentence2"), True,
                {"train": 5749, "dev": 1500, "test": 1379})
TASKS = {"cola": COLA, "rte": RTE, "mrpc": MRPC, "stsb": STSB}


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _label(value, kind: str, where: str):
    """The label of one record, or a DataError naming `where` (file: line) and the field."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "score":
        if not is_number or not math.isfinite(value):
            raise DataError(f"{where}: field 'label': expected a number from {STSB_RANGE[0]:g} to "
                            f"{STSB_RANGE[1]:g} (similarity score), got {_type_name(value)} {value!r}")
        if not STSB_RANGE[0] <= value <= STSB_RANGE[1]:
            raise DataError(f"{where}: field 'label': expected a score from {STSB_RANGE[0]:g} to "
                            f"{STSB_RANGE[1]:g}, got {value!r}")
        return float(value)
    if type(value) is not int:
        raise DataError(f"{where}: field 'label': expected int "
                        f"{'-1 (unlabelled test)' if kind == 'unlabeled' else '0 or 1'}, "
                        f"got {_type_name(value)} {value!r}")
    allowed = (UNLABELED,) if kind == "unlabeled" else (0, 1)
    if value not in allowed:
        raise DataError(f"{where}: field 'label': expected {' or '.join(map(str, allowed))}"
                        f"{' (unlabelled test)' if kind == 'unlabeled' else ''}, got {value}")
    return value


def read_glue_jsonl(path: Path, fields: tuple[str, ...], kind: str) -> tuple[list, np.ndarray]:
    """(x, y) of one GLUE JSONL file; `kind` is "class" (int 0/1), "score" (float 0-5) or "unlabeled" (-1).

    x holds strings for one field, (str, str) tuples for two. Other fields of a record are ignored.
    """
    expected = ", ".join([f'"{name}": str' for name in fields]
                         + ['"label": ' + {"class": "int", "score": "float", "unlabeled": "-1"}[kind]])
    x: list = []
    y: list = []
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                where = f"{path}: line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where} is not valid JSON ({exc.msg}); expected one object "
                                    f"{{{expected}}} per line (corrupt or truncated file?)") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected an object {{{expected}}}, got {line[:80].strip()!r}")
                for name in (*fields, "label"):
                    if name not in record:
                        raise DataError(f"{where}: field {name!r} missing; expected an object {{{expected}}}")
                for name in fields:
                    if not isinstance(record[name], str):
                        raise DataError(f"{where}: field {name!r}: expected str, got "
                                        f"{_type_name(record[name])} {record[name]!r}")
                x.append(record[fields[0]] if len(fields) == 1 else tuple(record[name] for name in fields))
                y.append(_label(record["label"], kind, where))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read past line {number} ({type(exc).__name__}: {exc})") from exc
    return x, np.asarray(y, dtype=np.float64 if kind == "score" else np.int64)


def _check_counts(path: Path, labels: np.ndarray, expected: tuple[int, ...] | int) -> None:
    if isinstance(expected, int):
        if len(labels) != expected:
            raise DataError(f"{path}: expected {expected} examples, got {len(labels)}")
        return
    got = np.bincount(labels, minlength=len(expected)).tolist()
    if got != list(expected):
        raise DataError(f"{path}: expected {sum(expected)} examples (per class {list(expected)}), "
                        f"got {len(labels)} (per class {got})")


def _task_folder(task: GlueTask, mirror: str | None) -> Path:
    if not mirror:
        raise DataError(f"{task.name}: REPRO_DATA_MIRROR is not set and GLUE has no download fallback "
                        f"(the mirror's files, e.g. MRPC's original MSR split, differ from the hub's); "
                        f"set REPRO_DATA_MIRROR (or base.data_mirror) to a folder holding {GLUE_FOLDER}/")
    folder = Path(mirror) / GLUE_FOLDER / task.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: no {GLUE_FOLDER}/{task.folder} folder in the data mirror "
                        f"REPRO_DATA_MIRROR={mirror}")
    return folder


def _load(task: GlueTask, mirror: str | None) -> Splits:
    """Every file of the task's folder verified, then each split read and its counts checked."""
    folder = _task_folder(task, mirror)
    for name, sha256 in GLUE_SHA256.items():
        if name.startswith(f"{task.folder}/"):
            verify_file(folder.parent / name, sha256)
    splits: Splits = {}
    for split, counts in task.counts.items():
        path = folder / f"{split}.jsonl"
        kind = "unlabeled" if split == "test_unlabeled" else "score" if task.regression else "class"
        splits[split] = read_glue_jsonl(path, task.fields, kind)
        _check_counts(path, splits[split][1], counts)
    return splits


def stratified_counts(labels: np.ndarray, size: int) -> list[int]:
    """Per-class sizes (classes 0..max) of a `size`-example draw proportional to the class shares.

    Each class gets floor(size * share); the remaining examples go to the largest fractional
    parts (ties: the lower class).
    """
    counts = np.bincount(labels)
    if not 0 <= size <= len(labels):
        raise DataError(f"stratified draw: size {size} outside 0..{len(labels)}")
    exact = size * counts / len(labels)
    sizes = np.floor(exact).astype(int)
    for c in sorted(range(len(counts)), key=lambda c: (-(exact[c] - sizes[c]), c))[:size - sizes.sum()]:
        sizes[c] += 1
    return sizes.tolist()


def mrpc_dev_mask(labels: np.ndarray, size: int = MRPC_DEV_SIZE, seed: int = MRPC_DEV_SEED) -> np.ndarray:
    """Boolean mask over the MRPC train rows: True for the `size` rows drawn as dev (see the module doc)."""
    rng = random.Random(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c, n in enumerate(stratified_counts(labels, size)):
        rows = np.flatnonzero(labels == c).tolist()
        rng.shuffle(rows)
        mask[rows[:n]] = True
    return mask


def load_cola(mirror: str | None) -> Splits:
    """CoLA sentences: train 8551 / dev 1043 / test_unlabeled 1063; 1 acceptable, 0 unacceptable."""
    return _load(COLA, mirror)


def load_rte(mirror: str | None) -> Splits:
    """RTE (sentence1, sentence2): train 2490 / dev 277 / test_unlabeled 3000; 0 entailment, 1 not."""
    return _load(RTE, mirror)


def load_mrpc(mirror: str | None, *, dev_size: int = MRPC_DEV_SIZE, seed: int = MRPC_DEV_SEED) -> Splits:
    """MRPC pairs: train 3668 / dev 408 (drawn from MSR train, `mrpc_dev_mask`) / test 1725; 1 paraphrase.

    `dev_size=0` returns the whole MSR train set (4076) and no dev split.
    """
    splits = _load(MRPC, mirror)
    pairs, labels = splits["train"]
    dev = mrpc_dev_mask(labels, dev_size, seed)
    out: Splits = {"train": ([p for p, d in zip(pairs, dev) if not d], labels[~dev])}
    if dev_size:
        out["dev"] = ([p for p, d in zip(pairs, dev) if d], labels[dev])
    out["test"] = splits["test"]
    return out


def load_stsb(mirror: str | None) -> Splits:
    """STS-B pairs: train 5749 / dev 1500 / test 1379 (labelled); float64 scores 0 (unrelated)..5 (same)."""
    return _load(STSB, mirror)


# name -> loader, for the dataset registry (common.data.registry.DATASETS): {"cola", "rte", "mrpc", "stsb"}
GLUE_LOADERS = {"cola": load_cola, "rte": load_rte, "mrpc": load_mrpc, "stsb": load_stsb}
