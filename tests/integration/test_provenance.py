"""Provenance: a cpu/paper grid does not run uncommitted code unless asked to, and a run from a dirty
tree stores the exact diff (by content hash) so `git apply` on the recorded HEAD rebuilds its code.

Grids run in a temporary git repository (`code_dir`) with a stand-in paper module, so nothing trains.
"""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from common.config import config_hash
from common.run import grid as grid_mod
from common.run.grid import run_grid
from common.run.job import DirtyTreeError, code_diff_path, code_state, git_sha
from common.run.local_backend import LocalBackend
from pipelines import cli
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A committed checkout: code under common/ and papers/, a committed result, params, dvc.lock."""
    root = tmp_path / "repo"
    for rel, text in {"common/core.py": "A = 1\n", "papers/p/algo.py": "def f():\n    return 1\n",
                      "params.yaml": "lr: 0.1\n", "results/cpu/old.json": "{}\n", "dvc.lock": "stages: {}\n",
                      "data.bin": "\x00\x01\x02"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


@pytest.fixture
def fake_paper(monkeypatch):
    """A paper module whose `execute` records its calls and returns a tiny outcome."""
    calls = []
    module = types.ModuleType("_provenance_fake_paper")

    def execute(config, mirror, on_epoch=None, split_path=None, checkpoint_path=None):
        calls.append(config["seed"])
        return {"metrics": {"test_acc": 50.0 + config["seed"]}, "history": []}

    module.execute = execute
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def configs(profile: str, seeds: int = 2) -> list[dict]:
    return [{"paper": "fake", "table": "t1", "setting": "s", "method": "m", "seed": s, "profile": profile,
             "epochs": 1} for s in range(seeds)]


def grid(repo: Path, results: Path, profile: str = "cpu", **kw):
    return run_grid(configs(profile), paper_module="_provenance_fake_paper", results_dir=results, mirror=None,
                    backend=LocalBackend(1), threads=1, code_dir=repo, **kw)


def result_files(results: Path) -> dict[str, bytes]:
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()} \
        if results.exists() else {}


def make_dirty(repo: Path) -> None:
    (repo / "common" / "core.py").write_text("A = 2  # uncommitted\n")          # tracked edit
    (repo / "papers" / "p" / "new_rule.py").write_text("B = 3\n")               # untracked code
    (repo / "data.bin").write_bytes(b"\x00\xff\x02\x03")                        # tracked binary edit
    (repo / "papers" / "p" / "algo.py").unlink()                                # tracked deletion


def test_clean_tree_runs_and_stores_nothing_extra(repo, tmp_path, fake_paper):
    results = tmp_path / "results"
    (repo / "results" / "cpu" / "old.json").write_text('{"new": 1}\n')    # pipeline outputs do not count
    (repo / "dvc.lock").write_text("stages: {run: {}}\n")                 # `dvc repro` rewrites it mid-pipeline
    (repo / "notes.txt").write_text("untracked, not code\n")
    (repo / "scratch.py").write_text("# untracked .py outside common/, papers/, pipelines/\n")
    report = grid(repo, results)
    assert len(report.done) == 2 and fake_paper == [0, 1]
    head = git(repo, "rev-parse", "HEAD").strip()
    for c in configs("cpu"):
        r = json.loads((results / f"cpu/fake/t1/s/m/seed{c['seed']}.json").read_text())
        assert r["git_sha"] == head
        assert "code_diff_sha256" not in r
        assert r["config_hash"] == config_hash(c)
    assert not list(results.rglob("*.diff")) and not (results / "cpu/fake/t1/code_diffs").exists()


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_dirty_tree_refuses_publishable_profiles(repo, tmp_path, fake_paper, profile):
    make_dirty(repo)
    results = tmp_path / "results"
    with pytest.raises(DirtyTreeError) as exc:
        grid(repo, results, profile=profile)
    msg = str(exc.value)
    for path in ("common/core.py", "papers/p/algo.py", "data.bin", "papers/p/new_rule.py"):
        assert path in msg
    assert "git commit" in msg and "--allow-dirty" in msg
    assert git(repo, "rev-parse", "HEAD").strip()[:12] in msg
    assert fake_paper == [] and result_files(results) == {}


def test_refusal_names_only_the_first_few_paths(repo, tmp_path, fake_paper):
    for i in range(9):
        (repo / "common" / f"extra_{i}.py").write_text(f"X = {i}\n")
    with pytest.raises(DirtyTreeError, match=r"common/extra_4\.py \(and 4 more\) differ from HEAD") as exc:
        grid(repo, tmp_path / "results")
    assert "extra_5" not in str(exc.value)


def test_untracked_code_makes_git_sha_dirty(repo):
    clean = git_sha(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (repo / "pipelines").mkdir()
    (repo / "pipelines" / "new.py").write_text("C = 1\n")
    assert git_sha(repo) == clean + "-dirty"
    assert code_state(repo).dirty_paths == ("pipelines/new.py",)


def test_allow_dirty_stores_a_diff_that_rebuilds_the_code(repo, tmp_path, fake_paper):
    make_dirty(repo)
    results = tmp_path / "results"
    report = grid(repo, results, allow_dirty=True)
    assert len(report.done) == 2 and fake_paper == [0, 1]
    head = git(repo, "rev-parse", "HEAD").strip()
    shas = set()
    for c in configs("cpu"):
        path = results / f"cpu/fake/t1/s/m/seed{c['seed']}.json"
        r = json.loads(path.read_text())
        assert r["git_sha"] == head + "-dirty"
        assert r["config_hash"] == config_hash(c)          # the diff is not part of the config hash
        diff = code_diff_path(path, r["code_diff_sha256"])
        assert diff == results / "cpu/fake/t1/code_diffs" / f"{r['code_diff_sha256']}.diff"
        assert hashlib.sha256(diff.read_bytes()).hexdigest() == r["code_diff_sha256"]
        shas.add(r["code_diff_sha256"])
    assert len(shas) == 1 and len(list(results.rglob("*.diff"))) == 1     # shared by content hash
    assert not list(results.rglob("*.tmp"))

    # a fresh checkout of the recorded HEAD plus the stored diff is exactly the tree that ran
    rebuilt = tmp_path / "rebuilt"
    git(tmp_path, "clone", "-q", str(repo), str(rebuilt))
    git(rebuilt, "checkout", "-q", head)
    diff = next(results.rglob("*.diff"))
    git(rebuilt, "apply", "--check", str(diff))
    git(rebuilt, "apply", str(diff))
    for rel in ("common/core.py", "papers/p/new_rule.py", "data.bin"):
        assert (rebuilt / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert not (rebuilt / "papers/p/algo.py").exists()
    assert (rebuilt / "results/cpu/old.json").read_bytes() == (repo / "results/cpu/old.json").read_bytes()


def test_smoke_never_refuses_and_keeps_the_diff(repo, tmp_path, fake_paper):
    make_dirty(repo)
    results = tmp_path / "results"
    report = grid(repo, results, profile="smoke")
    assert len(report.done) == 2
    r = json.loads((results / "smoke/fake/t1/s/m/seed0.json").read_text())
    assert r["git_sha"].endswith("-dirty")
    assert code_diff_path(results / "smoke/fake/t1/s/m/seed0.json", r["code_diff_sha256"]).is_file()


def test_smoke_runs_outside_git(tmp_path, fake_paper):
    report = grid(tmp_path / "not_a_repo", tmp_path / "results", profile="smoke")
    assert len(report.done) == 2
    assert json.loads((tmp_path / "results/smoke/fake/t1/s/m/seed0.json").read_text())["git_sha"] == "unknown"


def test_dry_run_and_finished_grids_do_not_refuse(repo, tmp_path, fake_paper):
    results = tmp_path / "results"
    grid(repo, results)                                   # clean: both runs finish
    make_dirty(repo)
    before = result_files(results)
    assert grid(repo, results, dry_run=True).skipped      # nothing to run: no refusal
    assert grid(repo, results).skipped
    (results / "cpu/fake/t1/s/m/seed1.json").unlink()
    before = result_files(results)
    assert grid(repo, results, dry_run=True).done == ["fake/t1/s/m/seed1"]
    assert result_files(results) == before and fake_paper == [0, 1]
    with pytest.raises(DirtyTreeError):
        grid(repo, results)
    assert result_files(results) == before and fake_paper == [0, 1]


def test_refusal_comes_before_replace_changed_archives(repo, tmp_path, fake_paper):
    results = tmp_path / "results"
    grid(repo, results)
    path = results / "cpu/fake/t1/s/m/seed0.json"
    path.write_text(path.read_text().replace(config_hash(configs("cpu")[0]), "0123456789abcdef"))
    make_dirty(repo)
    before = result_files(results)
    with pytest.raises(DirtyTreeError):
        grid(repo, results, replace_changed=True)
    assert result_files(results) == before


def test_outside_git_refuses_unless_allowed(tmp_path, fake_paper):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DirtyTreeError, match="not a git checkout"):
        grid(plain, tmp_path / "results")
    assert fake_paper == []
    grid(plain, tmp_path / "results", allow_dirty=True)
    r = json.loads((tmp_path / "results/cpu/fake/t1/s/m/seed0.json").read_text())
    assert r["git_sha"] == "unknown" and "code_diff_sha256" not in r


# --- the command line ------------------------------------------------------------------------------------

@pytest.fixture
def cpu_params(tmp_path) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                          tracking_uri="none", data_mirror=str(tmp_path / "no_mirror"), profile="cpu")
    params["base"]["runner"].update(workers=1)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_cli_refuses_a_cpu_run_from_a_dirty_tree(repo, tmp_path, cpu_params, capsys, monkeypatch):
    """`repro run` on the cpu profile from a dirty checkout: one clear error, exit 2, nothing runs."""
    from papers.hu19 import tables

    ran = []
    monkeypatch.setattr(tables, "execute", lambda *a, **k: ran.append(a) or {"metrics": {}, "history": []})
    monkeypatch.setattr(grid_mod, "REPO_DIR", repo)
    make_dirty(repo)
    argv = ["--params", str(cpu_params), "run", "--paper", "hu19", "--table", "table2", "--method", "base",
            "--seed", "0"]
    assert cli.main(argv + ["--dry-run"]) == 0                             # a dry run never refuses
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert re.search(r"error: refusing to run 'cpu'-profile results from a dirty tree: common/core\.py, .*"
                     r"commit the changes \(git commit\).*--allow-dirty", errors[0]), errors[0]
    assert ran == [] and result_files(tmp_path / "results") == {}


def test_cli_passes_allow_dirty_through(cpu_params, monkeypatch):
    import pipelines.grid as pgrid

    seen = {}

    def fake_run_tables(params, paper, profile, tables, **kw):
        seen.update(kw, profile=profile)
        return grid_mod.GridReport()

    monkeypatch.setattr(pgrid, "run_tables", fake_run_tables)
    base = ["--params", str(cpu_params), "run", "--paper", "hu19", "--table", "table2"]
    assert cli.main(base) == 0 and seen["allow_dirty"] is False and seen["profile"] == "cpu"
    assert cli.main(base + ["--allow-dirty"]) == 0 and seen["allow_dirty"] is True


def test_replace_dirty_reruns_results_of_uncommitted_code_from_the_committed_code(repo, tmp_path, fake_paper):
    results = tmp_path / "results"
    grid(repo, results)
    clean = git_sha(repo)
    dirty_path = results / "cpu/fake/t1/s/m/seed0.json"
    old = json.loads(dirty_path.read_text())
    dirty_path.write_text(json.dumps({**old, "git_sha": clean + "-dirty", "metrics": {"test_acc": 1.0}}))
    assert grid(repo, results).done == [] and fake_paper == [0, 1]         # without the flag: kept
    assert grid(repo, results, replace_dirty=True, dry_run=True).done == ["fake/t1/s/m/seed0"]
    report = grid(repo, results, replace_dirty=True)
    assert report.done == ["fake/t1/s/m/seed0"] and report.skipped == ["fake/t1/s/m/seed1"] and fake_paper == [0, 1, 0]
    assert json.loads(dirty_path.read_text())["git_sha"] == clean
    archived = json.loads((results / f"cpu/fake/t1/s/m/seed0.superseded-{old['config_hash']}.json").read_text())
    assert archived["git_sha"] == clean + "-dirty" and archived["metrics"] == {"test_acc": 1.0}
    # a second dirty result of the same config: archived beside the first, which is never overwritten
    dirty_path.write_text(json.dumps({**old, "git_sha": clean + "-dirty", "metrics": {"test_acc": 2.0}}))
    grid(repo, results, replace_dirty=True)
    second = results / f"cpu/fake/t1/s/m/seed0.superseded-{old['config_hash']}-2.json"
    assert json.loads(second.read_text())["metrics"] == {"test_acc": 2.0}
    assert json.loads((results / f"cpu/fake/t1/s/m/seed0.superseded-{old['config_hash']}.json").read_text()
                      )["metrics"] == {"test_acc": 1.0}
