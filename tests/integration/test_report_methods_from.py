"""`methods_from` in paper_tables.yaml: a method a table does not run in a profile is scored from another
table's runs with exactly the config this table would give them (metaaugment: Figure 5's eps = 0.1 point is
Table 1's `metaaugment`, Table 2's one-transformation row is Table 1's or Table 5's). Real metaaugment
params.yaml and paper_tables.yaml, smoke profile; result records are made here, nothing is trained."""
import copy

import pytest
import yaml

from common.config import config_hash, load_params
from common.errors import ConfigError
from pipelines.grid import table_configs
from pipelines.reports.markdown import render_inventory
from pipelines.reports.published import load_published
from pipelines.reports.table_report import build_table
from tests.conftest import REPO

PAPER = "metaaugment"


def record(config: dict, value: float, **extra) -> dict:
    keys = ("paper", "table", "setting", "method", "seed", "profile")
    return {**{k: config[k] for k in keys}, "config_hash": config_hash(config), "git_sha": "abc",
            "wall_s": 3600.0, "metrics": {"test_acc": value}, **extra}


def smoke_runs(params: dict, table: str, method: str, value: float) -> list[dict]:
    return [record(c, value + c["seed"]) for c in table_configs(params, PAPER, "smoke", table) if c["method"] == method]


def cell(report, method):
    return next(c for c in report.cells if c.method == method and c.setting == "cifar10_resnet20")


def test_figure5_scores_its_eps_01_row_from_table1_runs():
    params = load_params(REPO / "params.yaml")
    published = load_published(PAPER, REPO / "papers")
    t1 = smoke_runs(params, "table1", "metaaugment", 50.0)                  # seeds 0, 1: 50, 51
    stale = {**t1[0], "seed": 0, "config_hash": "old", "metrics": {"test_acc": 10.0}}
    other = smoke_runs(params, "table1", "baseline", 20.0)                  # another method: never borrowed
    own = smoke_runs(params, "figure5", "metaaugment_eps1", 40.0)
    report = build_table(published, "figure5", params, PAPER, "smoke", [stale, *t1[1:], *other, *own])
    assert (cell(report, "metaaugment").ours.n, cell(report, "metaaugment").ours.mean) == (1, 51.0)   # seed 0 stale
    report = build_table(published, "figure5", params, PAPER, "smoke", [*t1, stale, *other, *own])
    ours = cell(report, "metaaugment").ours
    assert (ours.n, ours.mean) == (2, 50.5)                                  # the stale one never counts
    assert {(r["table"], r.get("borrowed_from")) for r in report.runs if r["method"] == "metaaugment"} == {
        ("figure5", "table1")}
    assert report.ours_stats[("figure5", "cifar10_resnet20", "metaaugment_eps1")].mean == 40.5   # its own runs
    assert any("table1's runs of metaaugment (the same config" in f for f in report.footnotes)
    inventory = render_inventory([report])
    assert "| figure5 | 2 (+2 of table1) | 2.00 |" in inventory                # hours: its own runs only


def test_a_source_with_another_config_is_not_borrowed_and_says_why():
    params = load_params(REPO / "params.yaml")
    published = load_published(PAPER, REPO / "papers")
    t1 = smoke_runs(params, "table1", "metaaugment", 50.0)
    changed = copy.deepcopy(params)
    changed[PAPER]["profiles"]["smoke"]["figure5"]["epochs"] = 3                # figure5's recipe moved away
    report = build_table(published, "figure5", changed, PAPER, "smoke", t1)
    meta = cell(report, "metaaugment")
    assert meta.ours is None and meta.verdict.kind == "NOT RUN"
    assert "table1 runs differ in epochs" in meta.verdict.text
    assert "table3 has no cifar10_resnet20 runs of metaaugment" in meta.verdict.text


def test_no_finished_source_run_is_pending_not_missing_config():
    params = load_params(REPO / "params.yaml")
    report = build_table(load_published(PAPER, REPO / "papers"), "figure5", params, PAPER, "smoke", [])
    assert "none of table1's 2 planned runs of metaaugment finished yet" in cell(report, "metaaugment").verdict.text


def test_a_method_the_table_runs_itself_is_not_borrowed():
    params = load_params(REPO / "params.yaml")
    mine = copy.deepcopy(params)
    mine[PAPER]["profiles"]["smoke"]["figure5"]["methods"].append("metaaugment")
    t1 = smoke_runs(params, "table1", "metaaugment", 50.0)
    report = build_table(load_published(PAPER, REPO / "papers"), "figure5", mine, PAPER, "smoke", t1)
    assert cell(report, "metaaugment").ours is None and not report.runs


def test_table2_takes_its_one_transformation_row_from_the_first_matching_table():
    params = load_params(REPO / "params.yaml")
    published = load_published(PAPER, REPO / "papers")
    runs = smoke_runs(params, "table1", "metaaugment", 50.0) + smoke_runs(params, "table2", "metaaugment_mt", 60.0)
    report = build_table(published, "table2", params, PAPER, "smoke", runs)
    assert cell(report, "metaaugment").ours.mean == 50.5 and cell(report, "metaaugment_mt").ours.mean == 60.5


def test_mmel_table2_scores_its_b10_rows_from_table1_runs_of_another_method_id():
    """mmel's Table 2 |B| = 10 rows are Table 1's mmel_h / mmel_s (cpu: |B| = 10 there): the same config but the
    method id, scored from Table 1's seeds 0-2 (Table 2 plans 3) and relabelled; Table 1's other methods never.
    On smoke, Table 1's |B| is 3: nothing is borrowed and the cell says why."""
    params = load_params(REPO / "params.yaml")
    published = load_published("mmel", REPO / "papers")

    def runs(profile, table, method, value):
        return [{**record(c, value + c["seed"]), "profile": profile}
                for c in table_configs(params, "mmel", profile, table) if c["method"] == method]

    t1 = (runs("cpu", "table1", "mmel_h", 70.0) + runs("cpu", "table1", "mmel_s", 71.0)
          + runs("cpu", "table1", "da_uni", 1.0))
    assert len(t1) == 15
    report = build_table(published, "table2", params, "mmel", "cpu", t1 + runs("cpu", "table2", "mmel_h_b2", 60.0))
    stats = report.ours_stats
    assert (stats[("table2", "cifar10_resnet20", "mmel_h_b10")].n,
            stats[("table2", "cifar10_resnet20", "mmel_h_b10")].mean) == (3, 71.0)
    assert stats[("table2", "cifar10_resnet20", "mmel_s_b10")].mean == 72.0
    assert stats[("table2", "cifar10_resnet20", "mmel_h_b2")].mean == 61.0
    assert ("table2", "cifar10_resnet20", "da_uni") not in stats
    assert {r["method"] for r in report.runs if r.get("borrowed_from") == "table1"} == {"mmel_h_b10", "mmel_s_b10"}
    smoke = build_table(published, "table2", params, "mmel", "smoke", [])
    b10 = next(c for c in smoke.cells if c.method == "mmel_h_b10" and c.setting == "cifar10_resnet20")
    assert "table1's mmel_h runs differ in num_views" in b10.verdict.text


@pytest.mark.parametrize("entry, message", [
    ({"nope": ["t2"]}, r"methods_from\.nope: not a method \(row\) of the table"),
    ({"m": ["t9"]}, r"methods_from\.m: expected a non-empty list of other tables of this file \(\['t2'\]\), each a "
                    r"name or \{table: <name>, method: <method id>\}, got \['t9'\]"),
    ({"m": [{"table": "t2"}]}, r"methods_from\.m: expected a non-empty list"),
    ({"m": "t2"}, r"methods_from\.m: expected a non-empty list"),
    ({"m": ["t1"]}, r"methods_from\.m: expected a non-empty list"),
    (["m"], r"methods_from: expected a mapping method -> list of tables, got list"),
])
def test_bad_methods_from_names_the_key(tmp_path, entry, message):
    table = {"title": "x", "settings": {"s": {"label": "S"}}, "methods": {"m": {"label": "M"}},
             "results": {"s": {"m": {"mean": 1.0, "std": 0.1}}}}
    (tmp_path / "p").mkdir()
    (tmp_path / "p/paper_tables.yaml").write_text(yaml.safe_dump(
        {"n": 5, "tables": {"t1": {**table, "reference": "m", "methods_from": entry},
                            "t2": {**table, "reference": "m"}}}))
    with pytest.raises(ConfigError, match=message):
        load_published("p", tmp_path)
