"""`official_log` references in paper_tables.yaml: hu19's blocks parse with the values of the official
per-run logs, render beside the paper's numbers with their own verdict, and count on the scoreboard."""
import pytest

import pipelines.reports as report
from common.config import config_hash, load_params
from pipelines.grid import table_configs
from pipelines.reports.scoreboard import log_verdict_counts, render_index
from tests.conftest import REPO

# (table, setting, method) -> (n, mean, std) of "Final Test Acc" in the official logs, worked out by hand
KNOWN_LOGS = {
    ("table2", "not_pretrained", "base"): (30, 24.69, 3.30),
    ("table2", "not_pretrained", "ren"): (30, 22.27, 2.81),
    ("table2", "not_pretrained", "ours_weight"): (30, 26.48, 1.70),
    ("table1", "sst5", "base"): (15, 33.33, 4.04),
    ("table1", "sst5", "ren"): (15, 36.09, 2.27),
    ("table1", "sst5", "ours_weight"): (15, 36.52, 2.54),
    ("table1", "sst5", "ours_aug"): (15, 37.56, 2.63),
    ("table3", "ratio_20", "base"): (15, 54.92, 5.98),
}


def test_hu19_official_logs_parse_with_the_logged_values():
    published = report.load_published("hu19")
    logs = {(table, setting, method): cell["official_log"]
            for table, spec in published["tables"].items() for setting, by_method in spec["results"].items()
            for method, cell in by_method.items()
            if "official_log" in cell and method not in spec.get("our_variants", {})}
    assert len(logs) == 28                                     # 4 (table1) + 6 (table2) + 9 (table3) + 9 (table4)
    for key, (n, mean, std) in KNOWN_LOGS.items():
        assert (logs[key]["n"], logs[key]["mean"], logs[key]["std"]) == (n, mean, std), key
    assert all(log["source"] == "tanyuqian/learning-data-manipulation" and log["path"].startswith("results/")
               for log in logs.values())
    assert {n for (table, *_), log in logs.items() for n in [log["n"]] if table in ("table2", "table4")} == {30}
    assert "Final Test Acc" in published["official_logs"]["description"]


def table2_runs(params, accuracies: dict[str, list[float]]) -> list[dict]:
    """Current-config cpu results of table2 not_pretrained with the given test accuracies per method."""
    configs = {(c["setting"], c["method"], c["seed"]): c for c in table_configs(params, "hu19", "cpu", "table2")}
    return [{"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": method, "seed": seed,
             "profile": "cpu", "config_hash": config_hash(configs[("not_pretrained", method, seed)]), "git_sha": "a",
             "config": {}, "wall_s": 1.0,
             "metrics": {"test_acc": acc, "best_dev_acc": 0.0, "best_epoch": 1, "steps_at_best": 3}}
            for method, accs in accuracies.items() for seed, acc in enumerate(accs)]


def test_official_log_column_and_verdict_render_beside_the_papers():
    params, published = load_params(REPO / "params.yaml"), report.load_published("hu19")
    # base: 25.2 ± 0.2 -> FAIL vs the paper (22.98 ± 2.81, n=15: |2.22| > 2·√(2.81²/15 + 0.2²/2) = 1.48),
    # OK vs the log (24.69 ± 3.30, n=30: |0.51| <= 2·√(3.30²/30 + 0.2²/2) = 1.24)
    table = report.build_table(published, "table2", params, "hu19", "cpu", table2_runs(params, {"base": [25.0, 25.4]}))
    assert table.like_for_like and table.has_logs
    text = report.render_table_section(table, published, "cpu", None)
    assert "| official log mean ± std (n) |" in text and "| verdict vs official log |" in text
    assert "Official log: n, mean and population std" in text
    assert ("| Not-Pretrained | Base model: ResNet-34 | 22.98 ± 2.81 (15) | 24.69 ± 3.30 (30) | "
            "25.20 ± 0.20 (2) | +2.22 | FAIL | OK |") in text
    cells = {(c.setting, c.method): c for c in table.cells}
    assert cells[("not_pretrained", "base")].verdict.kind == "FAIL"
    assert cells[("not_pretrained", "base")].log_verdict.kind == "OK"
    assert cells[("not_pretrained", "base_val")].log is None
    assert "| Not-Pretrained | Base model + val-data | 23.42 ± 1.47 (15) | — |" in text
    assert cells[("pretrained", "ren")].log_verdict.text == "NOT RUN"

    assert log_verdict_counts(table) == "OK 1, NOT RUN 5"      # cells with a log only; base_val has none
    index = render_index({"hu19": [table]}, "cpu")
    assert "| hu19 | table2 | cpu | yes | 0 | 0 | 1 | 0 | 7 | [hu19.md](hu19.md) | OK 1, NOT RUN 5 |" in index
    assert "| mmel | — | cpu | not started |" in index


@pytest.mark.parametrize("log, message", [
    ({"source": "x", "path": "y", "n": 30, "mean": 1.0}, r"missing \['std'\]"),
    ({"source": "x", "path": "y", "n": 0, "mean": 1.0, "std": 1.0}, "expected a positive integer n"),
    ({"source": "x", "path": "y", "n": 30, "mean": "high", "std": 1.0}, "expected a positive integer n"),
])
def test_a_malformed_official_log_is_rejected(log, message):
    spec = {"results": {"s": {"base": {"mean": 1.0, "std": 1.0, "official_log": log}}}}
    with pytest.raises(report.ConfigError, match=r"tables\.t\.results\.s\.base\.official_log: .*" + message):
        report.published.validate_official_logs("t", spec)
