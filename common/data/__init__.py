"""Data registry, raw-data mirror with checksum verification, deterministic subsampling."""
from common.data.registry import DATASETS, load_dataset

__all__ = ["DATASETS", "load_dataset"]
