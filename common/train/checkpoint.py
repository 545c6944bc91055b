"""Epoch-boundary checkpoints of one run, so a killed run resumes to the same final metrics.

A checkpoint holds every piece of state the rest of the run depends on: model, optimizer,
method state (e.g. hu19's persistent weights), the data-order generator and the global torch RNG,
the per-epoch history and model-selection bookkeeping. Writes are atomic (temp file + rename);
loading uses `torch.load(weights_only=True)` (tensors and plain containers only). A checkpoint
written for another config hash, or one that cannot be read, is ignored and the run starts over.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from common.io import write_file_atomic

log = logging.getLogger("repro.checkpoint")


class RunCheckpoint:
    def __init__(self, path: str | os.PathLike | None, config_hash: str):
        self.path = Path(path) if path else None
        self.config_hash = config_hash

    def load(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp") if self.path.parent.exists() else []:
            stale.unlink(missing_ok=True)  # left by a run killed mid-write
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: start over, nothing finished is lost
            log.warning("%s: unreadable checkpoint (%s); starting the run from scratch", self.path, exc)
            return None
        if not isinstance(state, dict):  # e.g. a bare tensor saved there by something else
            log.warning("%s: not a run checkpoint (a %s); starting the run from scratch", self.path,
                        type(state).__name__)
            return None
        if state.get("config_hash") != self.config_hash:
            log.warning("%s: checkpoint of another config (%s); starting from scratch", self.path,
                        state.get("config_hash"))
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            write_file_atomic(self.path, lambda tmp: torch.save({**state, "config_hash": self.config_hash}, tmp))
        except OSError as exc:
            # Unwritable checkpoint folder, or another process starting the same run removed our temp
            # file as stale (concurrent `repro run`s): a checkpoint is only a shortcut, the run goes on.
            log.warning("%s: checkpoint not written (%s: %s); the run goes on without it", self.path,
                        type(exc).__name__, exc)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def capture(stateful: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """State dicts of the objects plus the RNG states, cloned (the run goes on mutating them)."""
    return {"objects": {name: obj.state_dict() for name, obj in stateful.items()},
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}


def restore(saved: dict[str, Any], stateful: dict[str, Any], generator: torch.Generator) -> None:
    for name, obj in stateful.items():
        obj.load_state_dict(saved["objects"][name])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
