"""The code passes the lint rules pinned in pyproject.toml ([tool.ruff.lint]): a finding fails CI."""
import subprocess
import sys

from tests.conftest import REPO


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                         capture_output=True, text=True)
    assert "No module named ruff" not in out.stderr, "ruff not installed: pip install -e '.[test]'"
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_the_pinned_rules_bite(tmp_path):
    """The selection really checks: an unused import and an unsorted import block are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                          str(REPO / "pyproject.toml"), str(bad)], capture_output=True, text=True)
    assert out.returncode == 1 and "F401" in out.stdout and "I001" in out.stdout, out.stdout + out.stderr
