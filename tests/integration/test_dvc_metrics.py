"""DVC's own views of the report: reports/metrics/<paper>.json (`dvc metrics show/diff`) and
reports/plots/<paper>/<table>/<setting>/<method>.csv (`dvc plots show`).

Toy published tables and result files in tmp_path as in test_report.py (same numbers, with
per-epoch histories; figures are not drawn here); the last test runs the real dvc CLI in a
temporary git + dvc repository.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

import pipelines.reports as report
from common.io import write_json_atomic
from common.run.results import RunKey
from pipelines.reports.metrics import rounded
from tests.conftest import REPO
from tests.integration.report_toys import (
    current_hashes_are_h,
    toy_hu19_published,
    verdict_rows,
    write_toy_result,
    write_toy_results,
)

PUBLISHED = toy_hu19_published()   # test_report.PUBLISHED without its std_kind
OUR_ACCURACIES = {   # (table, setting, method) -> test accuracies of seeds 0, 1, ...
    ("t1", "s1", "base"): [53.0, 57.0],          # 55 ± 2 vs 50 ± 3 -> FAIL
    ("t1", "s1", "m1"): [61.0, 63.0],            # 62 ± 1 vs 60 ± 3 -> OK
    ("t2", "r1", "base"): [40.0, 42.0],
    ("t2", "r1", "m1"): [45.0, 47.0, float("nan")],   # above base as in the paper -> SHAPE; one failed run
    ("t2", "r1", "m2"): [44.0, 46.0],            # above base, the paper has it below -> FAIL
    ("t2", "r2", "base"): [50.0],                # one run: m1 is PENDING
    ("t2", "r2", "m1"): [55.0, 57.0],
}


def toy_params(tmp_path) -> dict:
    paper_t1 = {"seeds": 4, "arch": "resnet34", "settings": {"s1": {}, "s2": {}}}
    paper_t2 = {"seeds": 4, "arch": "resnet34", "settings": {"r1": {}, "r2": {}, "r3": {}}}
    cpu_t1 = {"seeds": 2, "arch": "resnet34", "settings": {"s1": {}}, "not_run": {"s2": "needs a GPU"}}
    cpu_t2 = {"seeds": 4, "arch": "resnet18", "settings": {"r1": {}, "r2": {}}}
    return {"base": {"tracking_uri": "none", "results_dir": str(tmp_path / "results")},
            "hu19": {"profiles": {"paper": {"t1": paper_t1, "t2": paper_t2}, "cpu": {"t1": cpu_t1, "t2": cpu_t2}}}}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A synthetic hu19 package dir and cpu results; reports are written under tmp_path."""
    (tmp_path / "papers" / "hu19").mkdir(parents=True)
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(PUBLISHED, sort_keys=False))
    monkeypatch.setattr(report, "PAPERS_DIR", tmp_path / "papers")
    monkeypatch.setattr(report, "PAPER_MODULES", {"hu19": "papers.hu19.tables"})
    monkeypatch.setattr(report, "draw_figure", lambda *args: False)       # PNGs and the paper's own
    monkeypatch.setattr(report.markdown, "paper_sections", lambda *args: [])   # sections: test_report's
    current_hashes_are_h(monkeypatch)
    monkeypatch.chdir(tmp_path)
    write_toy_results(tmp_path / "results", "hu19", OUR_ACCURACIES)
    write_toy_result(tmp_path / "results", "hu19", "t1", "s1", "m1", 2, 0.0, config_hash="old",   # not counted
                     history=[{"phase": "train", "epoch": e, "dev_acc": 0.0} for e in (1, 2, 3, 4)])
    return toy_params(tmp_path)


# (setting, method) of toy table t1 -> per seed, the train-phase dev accuracies by epoch
HISTORIES = {
    ("s1", "base"): [[40.0, 50.0, 55.0], [42.0, 51.0, 56.0]],
    ("s1", "m1"): [[45.0, 60.0], [47.0, 61.0, 64.0]],      # seed 0 diverged at epoch 3
}
LOG = {"source": "toy/code", "path": "logs/", "n": 10, "mean": 61.0, "std": 1.0}   # official log of t1 s1 m1


def add_histories(tmp_path) -> None:
    """Per-epoch rows on the toy t1 results: a pretraining phase (not plotted), the train phase, and
    a diverged row without a dev accuracy."""
    for (setting, method), per_seed in HISTORIES.items():
        for seed, accs in enumerate(per_seed):
            path = RunKey("hu19", "t1", setting, method, seed).path(tmp_path / "results", "cpu")
            result = json.loads(path.read_text())
            history = [{"phase": "pretrain", "epoch": 1, "dev_acc": 10.0, "train_loss": 1.0}]
            history += [{"phase": "train", "epoch": e, "dev_acc": acc, "train_loss": 0.5}
                        for e, acc in enumerate(accs, start=1)]
            if len(accs) < 3:
                history.append({"phase": "train", "epoch": len(accs) + 1, "diverged": "loss is not finite"})
            path.unlink()
            write_json_atomic(path, {**result, "history": history})


def with_official_log(tmp_path) -> None:
    published = json.loads(json.dumps(PUBLISHED))
    published["tables"]["t1"]["results"]["s1"]["m1"]["official_log"] = LOG
    (tmp_path / "papers" / "hu19" / "paper_tables.yaml").write_text(yaml.safe_dump(published, sort_keys=False))


def dvc_files(tmp_path) -> dict:
    """Every file under reports/metrics and reports/plots -> its bytes."""
    return {p.relative_to(tmp_path).as_posix(): p.read_bytes()
            for folder in ("metrics", "plots") for p in sorted((tmp_path / "reports" / folder).rglob("*"))
            if p.is_file()}


def test_metrics_file_holds_the_report_cells(toy, tmp_path):
    with_official_log(tmp_path)
    report.write_reports(toy, "cpu", log_tables=False)
    metrics = json.loads((tmp_path / "reports" / "metrics" / "hu19.json").read_text())
    assert metrics["profile"] == "cpu" and set(metrics) == {"profile", "t1", "t2"}
    t1, t2 = metrics["t1"], metrics["t2"]
    assert t1["cells"]["s1"]["base"] == {"n": 2, "mean": 55.0, "std": 2.0, "verdict": "FAIL"}
    # 62 ± 1 (2) vs the log's 61 ± 1 (10): |1| <= 2·√(1/10 + 1/2) -> OK
    assert t1["cells"]["s1"]["m1"] == {"n": 2, "mean": 62.0, "std": 1.0, "verdict": "OK", "verdict_log": "OK"}
    assert t1["cells"]["s2"]["base"] == {"n": 0, "verdict": "NOT RUN"}         # no mean/std without a run
    assert t1["verdicts"] == {"OK": 1, "SHAPE": 0, "FAIL": 1, "PENDING": 0, "NOT RUN": 2}
    assert t1["verdicts_log"] == {"OK": 1, "SHAPE": 0, "FAIL": 0, "PENDING": 0, "NOT RUN": 0}
    assert t1["not_counted"] == 1 and t2["not_counted"] == 0      # seed 2 of s1 m1: another config, not in m1's n
    assert t2["cells"]["r1"]["m1"] == {"n": 2, "mean": 46.0, "std": 1.0, "verdict": "SHAPE"}   # the NaN run: failed
    assert t2["cells"]["r1"]["base"]["verdict"] == "ref" and t2["cells"]["r2"]["m1"]["verdict"] == "PENDING"
    assert t2["verdicts"] == {"OK": 0, "SHAPE": 1, "FAIL": 1, "PENDING": 1, "NOT RUN": 4}
    assert "verdicts_log" not in t2

    # the same cells, numbers and verdicts as the markdown report
    md = (tmp_path / "reports" / "hu19.md").read_text()
    for table in ("t1", "t2"):
        spec = PUBLISHED["tables"][table]
        rows = verdict_rows(md, table)
        for setting, by_method in metrics[table]["cells"].items():
            for method, cell in by_method.items():
                row = rows[(spec["settings"][setting]["label"], spec["methods"][method]["label"])]
                ours = row[2] if table == "t1" else row[1]          # t1 has the official-log columns
                assert ours.startswith(f"{cell['mean']:.2f} ± {cell['std']:.2f} ({cell['n']})" if cell["n"] else "—")
                verdict_column = row[-2] if table == "t1" else row[-1]
                assert verdict_column.startswith(cell["verdict"])


def test_plots_hold_the_mean_dev_accuracy_per_epoch_beside_the_paper(toy, tmp_path):
    add_histories(tmp_path)
    report.write_reports(toy, "cpu", log_tables=False)
    plots = tmp_path / "reports" / "plots" / "hu19"
    assert sorted(p.relative_to(plots).as_posix() for p in plots.rglob("*.csv")) == ["t1/s1/base.csv",
                                                                                   "t1/s1/m1.csv"]
    assert (plots / "t1" / "s1" / "base.csv").read_text() == (
        "epoch,ours_dev_acc,paper_test_acc,n_runs\n1,41.0,50.0,2\n2,50.5,50.0,2\n3,55.5,50.0,2\n")
    # seed 0 stopped after epoch 2 (its diverged row has no dev accuracy): epoch 3 is seed 1 alone
    assert (plots / "t1" / "s1" / "m1.csv").read_text() == (
        "epoch,ours_dev_acc,paper_test_acc,n_runs\n1,46.0,60.0,2\n2,60.5,60.0,2\n3,64.0,60.0,1\n")

    # a cell whose results disappear loses its file (and the emptied folders go)
    for path in (tmp_path / "results" / "cpu" / "hu19" / "t1" / "s1" / "m1").glob("*.json"):
        path.unlink()
    report.write_reports(toy, "cpu", log_tables=False)
    assert [p.name for p in plots.rglob("*.csv")] == ["base.csv"]


def test_an_unchanged_report_writes_byte_identical_files(toy, tmp_path):
    add_histories(tmp_path)
    with_official_log(tmp_path)
    report.write_reports(toy, "cpu", log_tables=False)
    first = dvc_files(tmp_path)
    assert "reports/metrics/hu19.json" in first and "reports/plots/hu19/t1/s1/m1.csv" in first
    report.write_reports(toy, "cpu", log_tables=False)
    assert dvc_files(tmp_path) == first
    assert rounded(2 / 3) == 0.6667 and repr(rounded(-0.00001)) == "0.0"      # 4 decimals, no "-0.0"
    text = first["reports/metrics/hu19.json"].decode()
    assert text.endswith("}\n") and json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n" == text


def dvc_declarations() -> tuple[dict, list]:
    """The report stage and the top-level plots of the repository's dvc.yaml."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return dvc_yaml["stages"]["report"], dvc_yaml.get("plots", [])


def entry_paths(entries: list) -> dict[str, dict]:
    """dvc.yaml output or plot entries (a path, or {path: options}) -> {path: options}."""
    pairs = [(e, None) if isinstance(e, str) else next(iter(e.items())) for e in entries]
    return {path: options or {} for path, options in pairs}


def covered(path: str, declared) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


def test_dvc_yaml_declares_every_metrics_and_plots_file(toy, tmp_path):
    add_histories(tmp_path)
    report.write_reports(toy, "cpu", log_tables=False)
    written = sorted(dvc_files(tmp_path))
    stage, top_plots = dvc_declarations()
    metrics, outs, plots = entry_paths(stage["metrics"]), entry_paths(stage["outs"]), entry_paths(top_plots)
    assert all(not options.get("cache", True) for options in [*metrics.values(), *outs.values()])
    for path in written:
        if path.startswith("reports/metrics/"):
            assert path in metrics, f"dvc.yaml: report stage metrics miss {path}"
        else:
            assert covered(path, outs), f"dvc.yaml: report stage outs miss {path}"
            assert covered(path, plots), f"dvc.yaml: top-level plots miss {path}"
    for options in plots.values():
        assert options["x"] == "epoch" and set(options["y"]) == {"ours_dev_acc", "paper_test_acc"}
    # and for every paper of the registry that has published tables (the real repository)
    papers = [p for p in report.PAPER_MODULES if report.load_published(p, REPO / "papers") is not None]
    assert papers
    for paper in papers:
        assert f"reports/metrics/{paper}.json" in metrics
        assert f"reports/plots/{paper}" in outs and f"reports/plots/{paper}" in plots


def run_dvc(repo, *args) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    command = [sys.executable, "-m", "dvc", *args] if args[0] != "git" else list(args)
    done = subprocess.run(command, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def copy_views(tmp_path, repo) -> None:
    for rel, data in dvc_files(tmp_path).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)


def test_dvc_metrics_and_plots_show_find_the_cells(toy, tmp_path):
    add_histories(tmp_path)
    report.write_reports(toy, "cpu", log_tables=False)
    repo = tmp_path / "dvcrepo"
    repo.mkdir()
    stage, top_plots = dvc_declarations()
    plot_outs = [{path: options} for path, options in entry_paths(stage["outs"]).items()
                 if covered(path, entry_paths(top_plots))]
    minimal = {"stages": {"report": {"cmd": "repro report", "outs": plot_outs, "metrics": stage["metrics"]}},
               "plots": top_plots}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(minimal, sort_keys=False))
    copy_views(tmp_path, repo)
    run_dvc(repo, "git", "init", "-q")
    run_dvc(repo, "init", "-q")

    shown = json.loads(run_dvc(repo, "metrics", "show", "--json"))
    data = shown[""]["data"]["reports/metrics/hu19.json"]["data"]
    assert data["t1"]["cells"]["s1"]["base"] == {"n": 2, "mean": 55.0, "std": 2.0, "verdict": "FAIL"}
    assert data["t2"]["cells"]["r1"]["m1"]["verdict"] == "SHAPE" and data["t2"]["verdicts"]["NOT RUN"] == 4

    plots = json.loads(run_dvc(repo, "plots", "show", "--json"))["data"]
    assert sorted(p for p in plots if p.startswith("reports/plots/hu19/")) == [   # (the toy has no other paper)
        "reports/plots/hu19/t1/s1/base.csv", "reports/plots/hu19/t1/s1/m1.csv"]
    values = plots["reports/plots/hu19/t1/s1/m1.csv"][0]["content"]["data"]["values"]
    series = {(v["field"], v["epoch"]): float(v["dvc_inferred_y_value"]) for v in values}
    assert series == {("ours_dev_acc", "1"): 46.0, ("ours_dev_acc", "2"): 60.5, ("ours_dev_acc", "3"): 64.0,
                      **{("paper_test_acc", e): 60.0 for e in ("1", "2", "3")}}

    # a moved cell shows in `dvc metrics diff` against the committed views, and only that cell
    run_dvc(repo, "git", "add", "-A")
    run_dvc(repo, "git", "commit", "-q", "-m", "views")
    path = RunKey("hu19", "t1", "s1", "m1", 1).path(tmp_path / "results", "cpu")
    result = json.loads(path.read_text())
    path.unlink()
    write_json_atomic(path, {**result, "metrics": {**result["metrics"], "test_acc": 65.0}})   # 62 ± 1 -> 63 ± 2
    report.write_reports(toy, "cpu", log_tables=False)
    copy_views(tmp_path, repo)
    diff = json.loads(run_dvc(repo, "metrics", "diff", "HEAD", "--json"))["reports/metrics/hu19.json"]
    assert diff == {"t1.cells.s1.m1.mean": {"old": 62.0, "new": 63.0, "diff": 1.0},
                    "t1.cells.s1.m1.std": {"old": 1.0, "new": 2.0, "diff": 1.0}}

