"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015): all 1,623 characters x 20 drawings = 32,460 images.

Reads `$REPRO_DATA_MIRROR/omniglot/omniglot.npz` (keys x uint8 [32460, 105, 105] with 255 = white
background and 0 = ink, character, drawing, alphabet; row i = character i // 20, drawing i % 20; see
the mirror's PROVENANCE.md) after sha256 verification. There is no download fallback (the official
release is a folder of PNGs, not an array).

Returned images are *ink = 255 on a black (0) background*, the "ink = 1" convention of the
provenance note scaled to uint8, so that the zero padding and the black fill of image operations
are background. `size` < 105 downsamples with area averaging (`torch.nn.functional.interpolate`,
mode "area": the mean of the source pixels each target pixel covers), rounded to uint8; decoded
and resized arrays are cached as .npy keyed by the verified checksum and the size.

`per_class_split` draws the split MetaAugment uses (Sec. "Omniglot": "for each character, we
select 15, 2, and 3 images as training, validation, and test data").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.mirror import cache_dir, verify_file
from common.errors import DataError
from common.io import save_npy_atomic

SHA256 = {"omniglot.npz": "a194d58e7c6172e8e100aacb2067ef1fdd3f56c198607ab86e5d8b3bfc1e8fa2"}  # PROVENANCE.md
N_CHARACTERS, N_DRAWINGS, ORIGINAL_SIZE = 1623, 20, 105
N_IMAGES = N_CHARACTERS * N_DRAWINGS
PAPER_SPLIT = (15, 2, 3)        # train / validation / test drawings per character (MetaAugment)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path) as archive:
            x, character, drawing = archive["x"], archive["character"], archive["drawing"]
    except Exception as exc:  # zipfile.BadZipFile, KeyError, EOFError, ...
        raise DataError(f"{path}: cannot read (expected an npz with keys x, character, drawing): {exc}") from exc
    want = (N_IMAGES, ORIGINAL_SIZE, ORIGINAL_SIZE)
    if x.dtype != np.uint8 or x.shape != want:
        raise DataError(f"{path}: expected x uint8 {want} (all 1,623 characters x 20 drawings at 105 x 105), "
                        f"got x {x.dtype} {x.shape}")
    if character.shape != (N_IMAGES,) or drawing.shape != (N_IMAGES,):
        raise DataError(f"{path}: expected character and drawing of shape ({N_IMAGES},), got "
                        f"{character.shape} and {drawing.shape}")
    order = np.arange(N_IMAGES)
    if not (np.array_equal(character, order // N_DRAWINGS) and np.array_equal(drawing, order % N_DRAWINGS)):
        raise DataError(f"{path}: rows are not in the documented order (row i = character i // 20, drawing i % 20)")
    return x, character.astype(np.int64), drawing.astype(np.int64)


def resize(ink: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 105, 105] -> uint8 [N, size, size] by area averaging (identity at 105)."""
    if size == ink.shape[-1]:
        return ink
    import torch
    import torch.nn.functional as F

    out = []
    for start in range(0, len(ink), 4096):      # bounded float memory
        part = torch.from_numpy(ink[start:start + 4096]).float().unsqueeze(1)
        out.append(F.interpolate(part, size=(size, size), mode="area").round().clamp(0, 255)
                   .to(torch.uint8).squeeze(1).numpy())
    return np.concatenate(out)


def load_omniglot(mirror: str | None, size: int = ORIGINAL_SIZE) -> dict[str, np.ndarray]:
    """{'x': uint8 [32460, size, size] (ink = 255), 'y': int64 character id, 'drawing': int64} in
    the mirror's row order."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= ORIGINAL_SIZE:
        raise DataError(f"Omniglot: size must be an int in [1, {ORIGINAL_SIZE}], got {size!r}")
    if not mirror:
        raise DataError("Omniglot: REPRO_DATA_MIRROR is not set and Omniglot has no download fallback; set "
                        "REPRO_DATA_MIRROR (or base.data_mirror) to a folder holding omniglot/omniglot.npz")
    folder = Path(mirror) / "omniglot"
    if not folder.is_dir():
        raise DataError(f"{folder}: no omniglot folder in the data mirror REPRO_DATA_MIRROR={mirror}")
    path = verify_file(folder / "omniglot.npz", SHA256["omniglot.npz"])
    key = f"{SHA256['omniglot.npz'][:16]}_{size}"
    cached = {a: cache_dir() / "omniglot" / f"{key}_{a}.npy" for a in ("x", "y", "drawing")}
    if all(p.exists() for p in cached.values()):
        return {a: np.load(p) for a, p in cached.items()}
    x, character, drawing = _read(path)
    data = {"x": resize(255 - x, size), "y": character, "drawing": drawing}
    for a, p in cached.items():
        save_npy_atomic(p, data[a])
    return data


def per_class_split(labels: np.ndarray, data_seed: int, counts: tuple[int, int, int] = PAPER_SPLIT,
                        characters: int | None = None) -> dict[str, list[int]]:
    """Row indices {'train', 'dev', 'test'}: per class (character) in id order, a random permutation
    of its rows (numpy default_rng(data_seed)) split into counts[0] train, counts[1] validation and
    counts[2] test rows; the rest is unused. Works for any labels 0..K-1 (MetaAugment's CIFAR
    validation rule too). `characters` keeps the first n classes only (smoke runs)."""
    labels = np.asarray(labels)
    n_chars = int(labels.max()) + 1 if characters is None else int(characters)
    if len(counts) != 3 or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise DataError(f"split: counts must be three non-negative ints, got {counts!r}")
    rng = np.random.default_rng(data_seed)
    out: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for char in range(n_chars):
        rows = np.flatnonzero(labels == char)
        if len(rows) < sum(counts):
            raise DataError(f"split: class {char} has {len(rows)} rows, the split needs {sum(counts)} ({counts})")
        rows = rows[rng.permutation(len(rows))]
        a, b, c = counts
        out["train"] += rows[:a].tolist()
        out["dev"] += rows[a:a + b].tolist()
        out["test"] += rows[a + b:a + b + c].tolist()
    return out
