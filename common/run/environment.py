"""What a float result depends on beyond its code, config and seed: the library builds and the CPU.

Runs are bit-reproducible on one machine (same seed, profile and code). On another CPU kind, or with
other torch / transformers / numpy releases, the last bits of a matmul can differ, and so can every
artifact trained from them (e.g. an MLM whose weights hash then differs). Results and MLM reports
record this block so that such a difference can be traced to its cause.
"""
from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


@functools.cache
def runtime_environment() -> dict:
    """{package: version} for torch, transformers and numpy (None when not installed), the CPU model
    and the CPU kernel level torch dispatches to (e.g. AVX2, AVX512)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch
    return {**versions, "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
