"""Atomic file writes and checksums: the one implementation every layer uses.

A write goes to a temporary file in the target folder, then `os.replace` (or, create-only, a hard
link that fails if the target exists), so a reader never sees a half-written file and a killed
process leaves at most a stray `*.tmp`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError


def json_safe(value: Any) -> Any:
    """NaN/inf floats become null, so files are strict JSON (readable by any parser, DVC included)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_file_atomic(path: Path, write: Callable[[Path], None], *, exclusive: bool = False) -> bool:
    """Call `write(tmp)` on a temporary file beside `path`, then move it to `path` (rename; with
    `exclusive` a hard link that never replaces an existing file: returns False then). The temp
    file is removed whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: Any, *, exclusive: bool = False) -> bool:
    """Write strict JSON (sorted keys, NaN as null) atomically, fsynced; see `write_file_atomic`."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(json_safe(payload), handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
    return write_file_atomic(path, write, exclusive=exclusive)


def write_or_check_split_file(path: Path, record: Any, *, differs: str) -> Any:
    """Write a split index file (JSON, create-only, atomic) or, if `path` exists, check that it holds exactly
    `record`: a split is a deterministic function of its config, so a second writer must agree with the
    first. Returns the stored record. DataError naming the file if it is not valid JSON or holds something
    else (`differs`: the message's second half, saying what to do)."""
    path = Path(path)
    record = json.loads(json.dumps(json_safe(record)))   # compare what JSON stores (tuples as lists, int keys as str)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: corrupt split index file ({exc}); delete it to re-create") from exc
        if saved != record:
            raise DataError(f"{path}: {differs}")
        return saved
    if write_json_atomic(path, record, exclusive=True):
        return record
    return write_or_check_split_file(path, record, differs=differs)   # a concurrent writer won: it must agree


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    write_file_atomic(path, write)


def publish_dir_atomic(tmp: Path, out_dir: Path) -> None:
    """Rename a finished temp folder to `out_dir`; an existing `out_dir` is moved aside first and
    deleted only once the new one is in place (restored if the rename fails)."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}") if out_dir.exists() else None
    if old:
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if old:
            os.rename(old, out_dir)
        raise
    if old:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
