"""The glibc allocator settings take effect (large blocks from the heap, kept after free), apply once,
and can be switched off.

The effect is read from glibc's own accounting (`mallinfo2`) in a fresh Python process per case, so
the settings of this test process (the CLI and runs apply them) do not matter: a 64 MB block is
above glibc's largest dynamic mmap threshold (32 MB), so by default it is an mmap of its own that
free() unmaps at once; tuned, it comes from the heap (`arena`) and stays there after free().
"""
import json
import os
import platform
import subprocess
import sys

import pytest

from common.run import allocator
from tests.conftest import REPO

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

MB = 1 << 20
SIZE = 64 * MB

PROBE = f"""
import ctypes, json, sys
from common.run import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def info():
    m = libc.mallinfo2()
    return {{"heap": m.arena, "mmapped": m.hblkhd, "mmapped_blocks": m.hblks}}

applied = allocator.keep_freed_memory() if sys.argv[1] == "tune" else None
before = info()
block = libc.malloc({SIZE})
ctypes.memset(block, 1, {SIZE})     # touched, as a tensor would be
during = info()
libc.free(block)
after = info()
print(json.dumps({{"applied": applied, "before": before, "during": during, "after": after}}))
"""


def probe(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "REPRO_MALLOC_TUNING")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env={**clean, **env}, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def delta(m: dict, key: str, a: str, b: str) -> int:
    return m[b][key] - m[a][key]


@glibc_only
def test_default_glibc_maps_and_unmaps_large_blocks():
    """The baseline the tuning changes (so the test below measures something)."""
    m = probe("default")
    assert delta(m, "mmapped", "before", "during") >= SIZE and delta(m, "mmapped_blocks", "before", "during") == 1
    assert delta(m, "heap", "before", "during") < 4 * MB
    assert m["after"]["mmapped"] == m["before"]["mmapped"]          # free() gave the 64 MB back to the kernel


@glibc_only
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    m = probe("tune")
    assert m["applied"] is True
    assert delta(m, "mmapped", "before", "during") == 0 and delta(m, "mmapped_blocks", "before", "during") == 0
    # M_MMAP_MAX = 0: from the heap, which grows by about the block (free space at its top is reused)
    assert m["during"]["heap"] >= SIZE and delta(m, "heap", "before", "during") >= SIZE - 4 * MB
    assert m["after"]["heap"] >= m["during"]["heap"]                  # M_TRIM_THRESHOLD: not trimmed on free


@glibc_only
def test_keep_freed_memory_applies_once(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append(param)
            return 1

    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.delenv("REPRO_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc())
    assert allocator.keep_freed_memory() is True
    assert sorted(calls) == sorted([allocator.M_MMAP_MAX, allocator.M_TRIM_THRESHOLD])
    assert allocator.keep_freed_memory() is True      # idempotent: no second mallopt
    assert len(calls) == 2


@glibc_only
def test_opt_out_leaves_glibc_defaults():
    m = probe("tune", REPRO_MALLOC_TUNING="0")
    assert m["applied"] is False
    assert delta(m, "mmapped", "before", "during") >= SIZE            # still an mmap of its own ...
    assert m["after"]["mmapped"] == m["before"]["mmapped"]            # ... returned on free


def test_opt_out_returns_false(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setenv("REPRO_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False
