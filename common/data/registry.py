"""Dataset registry: name -> loader returning {'train': (x, y), ['dev': (x, y),] 'test': (x, y)}.

x is an image array (cifar10) or a list of texts (text datasets); y is always an int64 label array.
"""
from __future__ import annotations

from collections.abc import Callable

from common.data.cifar10 import load_cifar10
from common.data.text import (
    load_imdb,
    load_sst2,
    load_sst2_phrases,
    load_sst5,
    load_trec,
)
from common.errors import ConfigError

DATASETS: dict[str, Callable[[str | None], dict]] = {
    "cifar10": load_cifar10,
    "sst5": load_sst5,
    "sst2": load_sst2,
    "sst2_phrases": load_sst2_phrases,
    "trec": load_trec,
    "imdb": load_imdb,
}


def load_dataset(name: str, mirror: str | None) -> dict:
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    return DATASETS[name](mirror)
