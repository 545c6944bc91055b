"""MNIST (LeCun et al. 1998): all 60k train + 10k test digits as uint8 NHWC arrays, original idx order.

Reads `$REPRO_DATA_MIRROR/mnist/{train,test}.npz` (keys x uint8 (N, 28, 28, 1), y int64) after sha256
verification against the digests below (from the mirror's PROVENANCE.md); without a mirror, downloads the
official files through torchvision. Every load verifies; the arrays are small, so nothing is cached.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.mirror import cache_dir, verify_file
from common.errors import DataError

SHA256 = {
    "train.npz": "f68f2be4651f8493c2e6c6f9823ce15b31b5ac8408212f77e5c9d6a79a8c1180",
    "test.npz": "6039069bcb922bca95d26b83bf8966d0e74b04ef81e298c31d514d8ae7701924",
}
N_TRAIN, N_TEST, N_CLASSES = 60_000, 10_000, 10


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as archive:
            x, y = archive["x"], archive["y"]
    except Exception as exc:  # zipfile.BadZipFile, KeyError, EOFError, ...
        raise DataError(f"{path}: cannot read (expected an npz with keys x, y): {exc}") from exc
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28, 1) or y.shape != (len(x),):
        raise DataError(f"{path}: expected x uint8 (N, 28, 28, 1) and y (N,), got x {x.dtype} {x.shape}, y {y.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
        raise DataError(f"{path}: labels outside 0..9 (min {y.min()}, max {y.max()})")
    return x, y


def _from_mirror(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "mnist"
    if not folder.is_dir():
        raise DataError(f"{folder}: no mnist folder in the data mirror REPRO_DATA_MIRROR={root}")
    return {split: _read_npz(verify_file(folder / f"{split}.npz", SHA256[f"{split}.npz"]))
            for split in ("train", "test")}


def _from_official() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torchvision

    root = cache_dir() / "mnist_official"
    try:
        sets = {s: torchvision.datasets.MNIST(root=str(root), train=s == "train", download=True)
                for s in ("train", "test")}
    except Exception as exc:
        raise DataError("MNIST: REPRO_DATA_MIRROR is not set and downloading the official files failed "
                        f"({type(exc).__name__}: {exc}); set REPRO_DATA_MIRROR to a folder holding "
                        "mnist/*.npz") from exc
    return {s: (d.data.numpy()[..., None].astype(np.uint8), d.targets.numpy().astype(np.int64))
            for s, d in sets.items()}


def load_mnist(mirror: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (x uint8 [60000, 28, 28, 1], y int64), 'test': (x [10000, ...], y)} in the original order."""
    splits = _from_mirror(Path(mirror)) if mirror else _from_official()
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        if len(splits[split][0]) != n:
            raise DataError(f"MNIST {split}: expected {n} images, got {len(splits[split][0])}")
    return splits
