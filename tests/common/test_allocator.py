"""The glibc allocator settings apply once, and can be switched off."""
import platform

import pytest

from common.run import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_once_on_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True      # idempotent


def test_opt_out(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setenv("REPRO_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False
