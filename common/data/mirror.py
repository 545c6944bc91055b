"""Locate raw files in the data mirror ($REPRO_DATA_MIRROR) and verify their sha256."""
from __future__ import annotations

import os
from pathlib import Path

from common.errors import DataError
from common.io import sha256_file


def verify_file(path: Path, expected_sha256: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file missing from the data mirror")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise DataError(f"{path}: checksum mismatch (sha256 {actual}, expected {expected_sha256}); "
                        "the file is corrupt or not the published version: replace it from the "
                        "official source or unset REPRO_DATA_MIRROR to download")
    return path


def cache_dir() -> Path:
    """Where decoded arrays and downloads are cached ($REPRO_CACHE_DIR, default ~/.cache/repro)."""
    root = Path(os.environ.get("REPRO_CACHE_DIR", Path.home() / ".cache" / "repro"))
    root.mkdir(parents=True, exist_ok=True)
    return root


