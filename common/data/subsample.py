"""Deterministic per-class subsampling, as the hu19 official code does it.

The official code seeds Python's `random` once (data seed 159), then for each class in order
shuffles that class's examples (in dataset order) and keeps the first k; the train draw comes
first, then the dev draw from the same stream. Shuffling a list of indices consumes the
generator exactly as shuffling the examples does, so the subsets here equal the official ones.

Protocols: `fixed` uses the data seed for every run (the paper); `per_seed` uses
data_seed + seed, so the subset varies with the run seed (seed 0 equals `fixed`).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from common.io import write_or_check_split_file

PROTOCOLS = ("fixed", "per_seed")


@dataclass(frozen=True)
class SplitSpec:
    """What to draw: per-class train counts from the train pool, dev counts from the dev pool."""

    dataset: str
    classes: tuple[int, ...]
    train_counts: tuple[int, ...]          # one count per class in `classes`
    dev_per_class: int
    dev_pool_size: int                     # train_tail: the dev pool is the last `dev_pool_size` train rows
    test_limit: int | None = None          # keep only the first n filtered test examples (smoke)
    extra: dict = field(default_factory=dict, compare=False)
    dev_source: str = "train_tail"         # see DEV_SOURCES
    class_order: tuple[int, ...] | None = None   # order in which classes are drawn (default: `classes`)
    test_sample: int | None = None         # score a fixed class-stratified random subset of n test examples

    def __post_init__(self):
        if len(self.classes) != len(self.train_counts):
            raise ConfigError(f"split {self.dataset}: classes {self.classes} and train_counts "
                              f"{self.train_counts} differ in length")
        if self.dev_source not in DEV_SOURCES:
            raise ConfigError(f"split {self.dataset}: dev_source {self.dev_source!r}; expected one of "
                              f"{list(DEV_SOURCES)}")
        if self.test_sample is not None and self.test_sample < len(self.classes):
            raise ConfigError(f"split {self.dataset}: test_sample {self.test_sample} must be at least the number "
                              f"of classes ({len(self.classes)})")
        if self.class_order is not None and sorted(self.class_order) != sorted(self.classes):
            raise ConfigError(f"split {self.dataset}: class_order {self.class_order} must be a permutation "
                              f"of classes {self.classes}")


# Where dev examples come from:
#   train_tail            the last `dev_pool_size` rows of the train split (hu19 CIFAR-10: last 500)
#   train_tail_per_class  the last `dev_pool_size` rows of each class (a label-sorted file, e.g. IMDB)
#   dev_split             the dataset's official dev split (SST-5, SST-2, as the hu19 text code)
DEV_SOURCES = ("train_tail", "train_tail_per_class", "dev_split")


def dev_pool_rows(train_labels: np.ndarray, dev_source: str, dev_pool_size: int) -> np.ndarray:
    """Boolean mask of the train rows a dev source reserves as its dev pool (`dev_split`: none)."""
    n = len(train_labels)
    mask = np.zeros(n, dtype=bool)
    if dev_source == "train_tail":
        mask[n - dev_pool_size:] = True
    elif dev_source == "train_tail_per_class":
        for cls in np.unique(train_labels):
            mask[np.flatnonzero(train_labels == cls)[-dev_pool_size:]] = True
    return mask


def dev_pool_mask(train_labels: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Boolean mask of the train rows reserved as the dev pool (never drawn for training)."""
    return dev_pool_rows(train_labels, spec.dev_source, spec.dev_pool_size)


def split_data_seed(protocol: str, data_seed: int, seed: int) -> int:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: unknown {protocol!r}; expected one of {list(PROTOCOLS)}")
    return data_seed if protocol == "fixed" else data_seed + seed


def _draw(labels: np.ndarray, pool: np.ndarray, classes, counts, rng: random.Random) -> list[int]:
    picked: list[int] = []
    for cls, k in zip(classes, counts):
        members = [int(i) for i in pool[labels[pool] == cls]]
        if k > len(members):
            raise DataError(f"class {cls}: asked for {k} examples but the pool has {len(members)}")
        rng.shuffle(members)
        picked.extend(members[:k])
    return picked


def make_split(train_labels: np.ndarray, test_labels: np.ndarray, spec: SplitSpec, data_seed: int,
               dev_labels: np.ndarray | None = None) -> dict:
    """Indices into the official arrays: {'train', 'dev', 'test'}; 'dev' indexes the train array,
    or the dev array when spec.dev_source == 'dev_split' (then `dev_labels` is required).

    One random.Random(data_seed) draws train then dev, class by class in `class_order`: with the
    official class order this is the hu19 code's random.seed(159) subset."""
    reserved = dev_pool_mask(train_labels, spec)
    train_pool, dev_pool = np.flatnonzero(~reserved), np.flatnonzero(reserved)
    dev_pool_labels = train_labels
    if spec.dev_source == "dev_split":
        if dev_labels is None:
            raise DataError(f"split {spec.dataset}: dev_source dev_split but the dataset has no dev split")
        dev_pool_labels, dev_pool = dev_labels, np.arange(len(dev_labels))
    order = spec.class_order or spec.classes
    count_of = dict(zip(spec.classes, spec.train_counts))
    rng = random.Random(data_seed)
    train = _draw(train_labels, train_pool, order, [count_of[c] for c in order], rng)
    dev = _draw(dev_pool_labels, dev_pool, order, [spec.dev_per_class] * len(order), rng)
    test = [int(i) for i in np.flatnonzero(np.isin(test_labels, spec.classes))]
    if spec.test_sample is not None:
        test = stratified_test_sample(np.asarray(test), np.asarray(test_labels)[test], spec.test_sample, data_seed)
    if spec.test_limit is not None:
        test = test[: spec.test_limit]
    return {"train": train, "dev": dev, "test": test}


def stratified_test_sample(test: np.ndarray, labels: np.ndarray, n: int, data_seed: int) -> list[int]:
    """A fixed random subset of n test indices with the test set's class proportions (largest
    remainders), drawn with its own generator so the train/dev draws are unchanged. For test sets
    too large to score in every run on a CPU (IMDB: 25,000 reviews); the subset is the same for
    every method and seed of a table."""
    if n > len(test):
        raise ConfigError(f"test_sample {n} exceeds the {len(test)} test examples")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(test)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    rng = np.random.default_rng([data_seed, 0x7E57])
    chosen = [rng.choice(test[labels == c], size=k, replace=False) for c, k in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(chosen))


def split_record(spec: SplitSpec, data_seed: int, split: dict) -> dict:
    spec_dict = asdict(spec)
    spec_dict.pop("extra")
    for key, default in (("dev_source", "train_tail"), ("class_order", None),
                         ("test_sample", None)):  # older files lack them
        if spec_dict[key] == default:
            spec_dict.pop(key)
    record = {"spec": spec_dict, "data_seed": data_seed, "counts": {k: len(v) for k, v in split.items()}, **split}
    return json.loads(json.dumps(record))  # the form it has once saved (tuples -> lists)


def load_or_make_split(path: Path | None, train_labels, test_labels, spec: SplitSpec, data_seed: int,
                       dev_labels=None) -> dict:
    """Read a prepared index file if it matches the spec, else draw the split (and save it)."""
    record = split_record(spec, data_seed, make_split(train_labels, test_labels, spec, data_seed, dev_labels))
    if path is None:
        return record
    return write_or_check_split_file(path, record, differs="prepared split differs from the one drawn now for the "
                                     "same spec and data seed; delete it (and re-run prepare) if the spec changed "
                                     "on purpose")
