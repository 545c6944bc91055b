"""The layer contracts of pyproject.toml hold (import-linter): a wrong arrow fails CI."""
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not installed: pip install -e '.[test]' (import-linter)")
    out = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_wrong_arrow_is_caught(tmp_path):
    """The contracts really bite: a copy of the tree where the ML core imports the run layer fails."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", "results", "splits", "reports", ".cache",
                                                              "artifacts", "*.db", ".checkpoints", "__pycache__"))
    loop = copy / "common" / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom common.run.results import read_result  # noqa: E402,F401\n")
    out = subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True,
                         env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert out.returncode != 0 and "common.train.loop -> common.run.results" in out.stdout
