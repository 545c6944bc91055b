"""The torch device a run uses.
"""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
