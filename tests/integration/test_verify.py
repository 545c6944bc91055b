"""`repro verify`: committed results re-run here, per run (bitwise, first differing epoch) and per cell (2 SE).

The end-to-end test runs a tiny smoke grid (table2, `base`, 2 seeds) into a tmp results dir, verifies it
(same machine and code: bitwise equal, agree), then shifts the committed cell and checks the runs are
flagged, the cell DISAGREEs with exit code 1, and that neither that results dir nor the repository's
results/ or .checkpoints/ were written to. The verdict rule itself and the bad inputs are tested
without training.
"""
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from common.config import config_hash, load_params
from pipelines.grid import table_configs
from pipelines.verify import RunCheck, cell_verdict, estimate_seconds, first_difference
from tests.conftest import REPO, repro, tree

CELL = "smoke/hu19/table2/not_pretrained/base"


def write_params(work: Path, mirror: str, seeds: int = 2) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(work / "results"), splits_dir=str(work / "splits"), tracking_uri="none",
                          data_mirror=mirror, profile="smoke")
    params["base"]["runner"].update(workers=1, threads_per_worker=1)
    table = params["hu19"]["profiles"]["smoke"]["table2"]
    table.update(methods=["base"], seeds=seeds, epochs=1, test_limit=100)   # ~2 s per run
    work.mkdir(parents=True, exist_ok=True)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def assert_clear_error(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), f"{pattern!r} not in {errors[0]!r}"


# --- end to end on the smoke profile ------------------------------------------------------------------

def test_verify_smoke_grid_agrees_then_flags_a_shifted_cell(tmp_path, mirror, capsys, monkeypatch):
    params = write_params(tmp_path / "work", mirror)
    results = tmp_path / "work" / "results"
    code, out, err = repro(capsys, "--params", params, "run", "--profile", "smoke", "--table", "table2")
    assert code == 0, out + err
    committed = tree(results)
    committed_acc = [json.loads((results / CELL / f"seed{s}.json").read_text())["metrics"]["test_acc"] for s in (0, 1)]
    repo_before = {d: tree(REPO / d / "smoke") for d in ("results", ".checkpoints", "splits")}
    scratch = tmp_path / "scratch"          # verify's temporary directory goes here (and must be removed)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    # same machine, same code: every re-run is bitwise equal, the cell agrees
    report = tmp_path / "verify.json"
    code, out, err = repro(capsys, "--params", params, "verify", "--profile", "smoke", "--table", "table2",
                           "--runs-per-cell", "2", "--out", report)
    assert code == 0, out + err
    assert re.search(r"re-running 2 run\(s\) of 1 cell\(s\) on 1 worker\(s\): about [\d.]+ min", out)
    payload = json.loads(report.read_text())
    assert payload["ok"] and [r["seed"] for r in payload["runs"]] == [0, 1]
    assert all(r["bitwise"] and r["delta"] == 0 and r["first_difference"] is None for r in payload["runs"])
    (cell,) = payload["cells"]
    assert (cell["verdict"], cell["n"], cell["k"], cell["note"]) == ("agree", 2, 2, "bitwise equal")
    assert "1 of 1 cell(s) agree" in out
    assert tree(results) == committed and list(scratch.iterdir()) == []

    # the committed cell shifted by +30 (as if other code had made it; its std stays) and a history row of
    # seed 0 edited. Re-running seed 0 alone: |delta| >= 30 - spread/2 > 2 SE = spread sqrt(1 + 1/2), spread
    # = |acc0 - acc1| (or spread 0: exact check)
    for seed in (0, 1):
        path = results / CELL / f"seed{seed}.json"
        result = json.loads(path.read_text())
        result["metrics"]["test_acc"] += 30.0
        if seed == 0:
            result["history"][-1]["train_loss"] += 1e-6
        path.write_text(json.dumps(result))
    assert abs(committed_acc[0] - committed_acc[1]) < 15, "the smoke seeds spread too far for this check"
    shifted = tree(results)
    code, out, err = repro(capsys, "--params", params, "verify", "--profile", "smoke", "--table", "table2",
                           "--method", "base", "--runs-per-cell", "1", "--out", report)
    assert code == 1, out + err
    payload = json.loads(report.read_text())
    (run,) = payload["runs"]
    assert (run["seed"], run["bitwise"], run["delta"]) == (0, False, -30.0)
    history = json.loads((results / CELL / "seed0.json").read_text())["history"]
    differs = run["first_difference"]                            # the edited (last) history row
    assert (differs["row"], differs["epoch"]) == (len(history) - 1, history[-1]["epoch"])
    assert re.search(rf"seed0 .* no  train epoch {history[-1]['epoch']} \(train_loss\); scores equal", out)
    (cell,) = payload["cells"]
    assert (cell["verdict"], cell["n"], cell["k"]) == ("DISAGREE", 2, 1) and math.isclose(cell["delta"], -30.0 + (
        committed_acc[0] - committed_acc[1]) / 2)
    assert "DISAGREE" in out and "0 of 1 cell(s) agree; not: table2/not_pretrained/base" in out
    assert tree(results) == shifted and list(scratch.iterdir()) == []
    assert {d: tree(REPO / d / "smoke") for d in ("results", ".checkpoints", "splits")} == repo_before


# --- the verdict rule (no training) -------------------------------------------------------------------

def check(seed: int, committed: float, rerun: float, bitwise: bool = False, error=None) -> RunCheck:
    return RunCheck("t", "s", "m", seed, committed, rerun, None if rerun is None else rerun - committed, bitwise,
                    error=error)


def test_cell_verdict_two_se_rule():
    committed = [20.0, 22.0, 24.0, 26.0]                       # mean 23, population std sqrt(5)
    se = math.sqrt(5) * math.sqrt(1 / 2 + 1 / 4)
    inside = [check(0, 20.0, 23.0 + 2 * se - 0.2), check(1, 22.0, 23.0 + 2 * se + 0.2)]  # mean 23 + 2 SE
    verdict, got_se, note = cell_verdict(committed, inside)
    assert verdict == "agree" and math.isclose(got_se, se) and note == ""
    outside = [check(0, 20.0, 23.0 + 2 * se + 0.1), check(1, 22.0, 23.0 + 2 * se + 0.1)]
    assert cell_verdict(committed, outside)[0] == "DISAGREE"
    # one re-run off by 4 from its committed seed is flagged per run, but the cell agrees (new draw, same spread)
    assert cell_verdict(committed, [check(0, 20.0, 24.0)])[0] == "agree"


def test_cell_verdict_bitwise_small_n_and_failed():
    assert cell_verdict([20.0, 30.0], [check(0, 20.0, 20.0, bitwise=True)]) == ("agree", None, "bitwise equal")
    # n = 1 or std 0: no SE, exact comparison per seed
    assert cell_verdict([20.0], [check(0, 20.0, 20.0)])[0] == "agree"
    verdict, se, note = cell_verdict([20.0], [check(0, 20.0, 20.01)])
    assert (verdict, se) == ("DISAGREE", None) and note.startswith("n too small (n=1)")
    assert cell_verdict([20.0, 20.0], [check(0, 20.0, 21.0)])[2].startswith("n too small (committed std 0)")
    assert cell_verdict([20.0, 22.0], [check(0, 20.0, math.nan)])[0] == "DISAGREE"
    assert cell_verdict([20.0, 22.0], [check(0, 20.0, None, error="boom")])[0] == "FAILED"


def test_first_difference_and_estimate():
    a = [{"epoch": 1, "phase": "train", "dev_acc": 10.0}, {"epoch": 2, "phase": "train", "dev_acc": 12.0}]
    assert first_difference(a, [dict(r) for r in a]) is None
    b = [a[0], {**a[1], "dev_acc": 11.0}]
    assert first_difference(a, b)["epoch"] == 2 and first_difference(a, b)["row"] == 1
    assert first_difference(a, b)["keys"] == ["dev_acc"]
    assert first_difference(a, a[:1])["epoch"] == 2                  # the re-run stopped early
    lossy = [{**a[0], "train_loss": 2.5}, {**a[1], "train_loss": 2.4}]
    drift = [{**lossy[0], "train_loss": 2.5000001}, {**lossy[1], "train_loss": 2.4, "dev_acc": 11.0}]
    assert first_difference(lossy, drift)["keys"] == ["train_loss"] and first_difference(lossy, drift)["row"] == 0
    assert first_difference(lossy, drift, scores_only=True)["row"] == 1    # where dev_acc first differs
    assert first_difference(lossy, [dict(r) for r in lossy], scores_only=True) is None
    assert estimate_seconds([100, 60, 50, 40], 2) == 140 and estimate_seconds([100, 60], 1) == 160


# --- bad inputs (docs/bad_inputs.md) ------------------------------------------------------------------

@pytest.fixture
def work(tmp_path):
    return write_params(tmp_path, str(tmp_path / "no_mirror"))


def fake_result(params_path: Path, seed: int = 0, edit_config=None) -> Path:
    """A counted (current config hash) smoke base result, written without training."""
    params = load_params(params_path)
    config = next(c for c in table_configs(params, "hu19", "smoke", "table2")
                  if c["method"] == "base" and c["seed"] == seed)
    h = config_hash(config)
    stored = dict(config)
    if edit_config:
        edit_config(stored)
    payload = {"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": "base", "seed": seed,
               "profile": "smoke", "config_hash": h, "config": stored, "git_sha": "abc",
               "metrics": {"test_acc": 12.5}, "history": [], "wall_s": 1.0, "threads": 1,
               "finished_at": "2026-01-01T00:00:00+00:00"}
    path = Path(params["base"]["results_dir"]) / CELL / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize("argv, pattern", [
    ([], r"verify: no counted result matches paper=hu19 profile=smoke .*cells with counted results: none"),
    (["--method", "ren"], (r"no counted result matches .*method=ren .*cells with counted results: "
                           r"\['table2/not_pretrained/base'\]")),
    (["--setting", "pretrained"], r"no counted result matches .*setting=pretrained"),
], ids=["no-results", "method-without-results", "setting-without-results"])
def test_verify_filter_without_counted_results(work, capsys, argv, pattern):
    if argv:
        fake_result(work)
    before = tree(work.parent / "results")
    code, _, err = repro(capsys, "--params", work, "verify", "--profile", "smoke", "--table", "table2", *argv)
    assert_clear_error(code, err, pattern)
    assert tree(work.parent / "results") == before


def test_verify_stale_results_are_not_counted(work, capsys):
    path = fake_result(work)
    result = json.loads(path.read_text())
    result["config_hash"] = "0" * 16                   # made with other params: `repro report` does not count it
    path.write_text(json.dumps(result))
    code, _, err = repro(capsys, "--params", work, "verify", "--profile", "smoke")
    assert_clear_error(code, err, r"no counted result matches .*cells with counted results: none")


@pytest.mark.parametrize("argv, pattern", [
    (["--runs-per-cell", "0"], r"--runs-per-cell: expected a number >= 1, got 0"),
    (["--runs-per-cell", "-1"], r"--runs-per-cell: expected a number >= 1, got -1"),
    (["--workers", "0"], r"--workers: expected a number >= 1, got 0"),
    (["--table", "table9"], r"--table: unknown table 'table9' for hu19 profile 'smoke'"),
], ids=["runs-per-cell-zero", "runs-per-cell-negative", "workers-zero", "unknown-table"])
def test_verify_bad_numbers(work, capsys, argv, pattern):
    fake_result(work)
    code, out, err = repro(capsys, "--params", work, "verify", "--profile", "smoke", *argv)
    assert_clear_error(code, err, pattern)
    assert out == ""                                   # nothing estimated, nothing run


@pytest.mark.parametrize("case", ["edited", "missing"])
def test_verify_result_whose_stored_config_was_edited(work, capsys, case):
    path = fake_result(work, edit_config=lambda c: c.update(epochs=c["epochs"] + 1))
    pattern = r"stores a `config` that hashes to \w{16}, not its config_hash \w{16} \(the file was edited\)"
    if case == "missing":
        result = json.loads(path.read_text())
        del result["config"]
        path.write_text(json.dumps(result))
        pattern = r"stores no `config`"
    code, out, err = repro(capsys, "--params", work, "verify", "--profile", "smoke")
    assert_clear_error(code, err, r"base/seed0\.json: the committed result " + pattern + ", so it cannot be re-run "
                                  "exactly; restore the file from git")
    assert out == ""


def test_verify_dry_run_lists_the_selection(work, capsys):
    for seed in (1, 0):
        fake_result(work, seed)
    code, out, err = repro(capsys, "--params", work, "verify", "--profile", "smoke", "--runs-per-cell", "1",
                           "--dry-run")
    assert code == 0, err
    assert "would re-run table2/not_pretrained/base: seed(s) [0] of 2 counted" in out
