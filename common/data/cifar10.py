"""CIFAR-10 (Krizhevsky 2009): all 50k train + 10k test images as uint8 NHWC arrays.

Reads `$REPRO_DATA_MIRROR/cifar10/{train_1..5,test}.npz` (keys x, y) after sha256 verification;
without a mirror, downloads the official archive through torchvision (md5-checked there).
Decoded arrays are cached as .npy keyed by the verified checksums.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.mirror import cache_dir, verify_file
from common.errors import DataError
from common.io import save_npy_atomic

# sha256 of the mirror files, from the mirror's PROVENANCE.md (official order data_batch_1..5, test_batch).
SHA256 = {
    "train_1.npz": "2a51ef720d5011fb0ff82c740aa76faa59245fb5cfdd7d068b6b7363779fbcec",
    "train_2.npz": "284eee10182f9a3704ae14c1dadcd55d94e2af7b0648fae9211cf05cbcde429f",
    "train_3.npz": "30c1c0b4fd1e70375fba9d60633f9a4368bdd00fd29c5be4ab51f98901c65998",
    "train_4.npz": "2ab34eccd03047117df60ac9d9d742232fe7b1b59ffdf07e3f3cae6dfda66318",
    "train_5.npz": "f851e58606ea6d0ff0fba47e065395e696c243f2dd57e3992e349d9c50444124",
    "test.npz": "e5ff39513fe51aec647c2dc0562f79efe3556bd5953584e8210988c68abf3ff9",
}
N_TRAIN, N_TEST, N_CLASSES = 50_000, 10_000, 10
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as archive:
            x, y = archive["x"], archive["y"]
    except Exception as exc:  # zipfile.BadZipFile, KeyError, EOFError, ...
        raise DataError(f"{path}: cannot read (expected an npz with keys x, y): {exc}") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(y) != len(x):
        raise DataError(f"{path}: expected x uint8 (N,32,32,3) and y (N,), got x {x.dtype} {x.shape}, "
                        f"y {y.shape}")
    return x, y.astype(np.int64)


def _from_mirror(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar10"
    if not folder.is_dir():
        raise DataError(f"{folder}: no cifar10 folder in the data mirror REPRO_DATA_MIRROR={root}")
    # Every load verifies the mirror files (sha256 is fast); only the slow LZMA decoding is cached.
    files = {name: verify_file(folder / name, digest) for name, digest in SHA256.items()}
    key = "".join(SHA256[name][:8] for name in sorted(SHA256))
    cached = {(s, a): cache_dir() / "cifar10" / f"{s}_{key}_{a}.npy" for s in ("train", "test") for a in "xy"}
    if all(p.exists() for p in cached.values()):
        return {s: (np.load(cached[s, "x"]), np.load(cached[s, "y"])) for s in ("train", "test")}
    parts = {name: _read_npz(path) for name, path in files.items()}
    train_x = np.concatenate([parts[f"train_{i}.npz"][0] for i in range(1, 6)])
    train_y = np.concatenate([parts[f"train_{i}.npz"][1] for i in range(1, 6)])
    splits = {"train": (train_x, train_y), "test": parts["test.npz"]}
    for split, (x, y) in splits.items():
        save_npy_atomic(cached[split, "x"], x)
        save_npy_atomic(cached[split, "y"], y)
    return splits


def _from_official() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torchvision

    root = cache_dir() / "cifar10_official"
    try:
        train = torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(root=str(root), train=False, download=True)
    except Exception as exc:
        raise DataError(
            "CIFAR-10: REPRO_DATA_MIRROR is not set and downloading the official archive failed "
            f"({type(exc).__name__}: {exc}); set REPRO_DATA_MIRROR to a folder holding cifar10/*.npz") from exc
    return {"train": (np.asarray(train.data), np.asarray(train.targets, dtype=np.int64)),
            "test": (np.asarray(test.data), np.asarray(test.targets, dtype=np.int64))}


def load_cifar10(mirror: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (x uint8 [50000,32,32,3], y int64), 'test': (x [10000,...], y)} in official order."""
    splits = _from_mirror(Path(mirror)) if mirror else _from_official()
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        if len(splits[split][0]) != n:
            raise DataError(f"CIFAR-10 {split}: expected {n} images, got {len(splits[split][0])}")
    return splits
