"""The layer contracts of pyproject.toml hold (import-linter): a wrong arrow fails CI."""
import shutil
import subprocess
from pathlib import Path

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
    def ignore(folder, names):   # only the code matters: skip the data-sized top-level folders
        top = {".git", "results", "splits", "reports", ".cache", "artifacts", ".checkpoints", ".dvc"}
        return {n for n in names if n == "__pycache__" or n.endswith(".db") or
                (Path(folder) == REPO and n in top)}
    shutil.copytree(REPO, copy, ignore=ignore)
    loop = copy / "common" / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom common.run.results import read_result  # noqa: E402,F401\n")
    out = subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True,
                         env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert out.returncode != 0 and "common.train.loop -> common.run.results" in out.stdout


def test_unit_tests_of_common_import_no_paper_and_no_pipeline():
    """tests/common/<layer>/ test the shared core alone; anything using papers or pipelines is an
    integration test (tests/integration) or a paper's test (tests/papers/<p>)."""
    import ast
    offenders = []
    for path in sorted((REPO / "tests" / "common").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("papers", "pipelines")]
    assert not offenders, offenders
    layers = {p.name for p in (REPO / "tests" / "common").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert layers <= {"data", "models", "train", "run", "text", "meta", "augment"}, layers
