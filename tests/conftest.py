import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded-array cache shared by the session, never the user's ~/.cache."""
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "repro_cache"))


@pytest.fixture
def mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "cifar10").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with cifar10/ is needed (CI sets it)")
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for the test (MLM training numbers are compared across runs)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
