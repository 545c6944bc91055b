"""Dataset registry: name -> loader returning {'train': (x, y), 'test': (x, y)} arrays."""
from __future__ import annotations

from typing import Callable

from common.data.cifar10 import load_cifar10
from common.errors import ConfigError

DATASETS: dict[str, Callable[[str | None], dict]] = {
    "cifar10": load_cifar10,
}


def load_dataset(name: str, mirror: str | None) -> dict:
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; registered: {sorted(DATASETS)}")
    return DATASETS[name](mirror)
