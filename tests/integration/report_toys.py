"""Shared bits of the report tests' toy papers: toy result files and reading a report's tables back.

Deliberately free of torch and papers.*: test_dvc_metrics and test_report_reference import this instead
of test_report (which pulls in torch through papers.hu19).
"""
from pathlib import Path

from common.io import write_json_atomic
from common.run.results import RunKey


def toy_hu19_published(**top) -> dict:
    """A toy paper_tables.yaml named hu19: t1 like-for-like (s1, s2 x base, m1), t2 deviating (r1-r3 x base,
    m1, m2). `top` keys (test_report's std_kind) go before `tables`. A fresh dict on every call."""
    return {
        "paper": "hu19", "citation": "A. Author. A Toy Paper. 2024.", "n": 4, **top,
        "tables": {
            "t1": {"title": "Toy like-for-like table",
                   "settings": {"s1": {"label": "S one"}, "s2": {"label": "S two"}},
                   "methods": {"base": {"label": "Base"}, "m1": {"label": "Method one"}},
                   "results": {"s1": {"base": {"mean": 50.0, "std": 3.0}, "m1": {"mean": 60.0, "std": 3.0}},
                               "s2": {"base": {"mean": 40.0, "std": 3.0}, "m1": {"mean": 45.0, "std": 3.0}}}},
            "t2": {"title": "Toy deviating table",
                   "settings": {"r1": {"label": "R one"}, "r2": {"label": "R two"}, "r3": {"label": "R three"}},
                   "methods": {"base": {"label": "Base"}, "m1": {"label": "Up"}, "m2": {"label": "Down"}},
                   "results": {r: {"base": {"mean": 70.0, "std": 2.0}, "m1": {"mean": 75.0, "std": 2.0},
                                   "m2": {"mean": 65.0, "std": 2.0}} for r in ("r1", "r2", "r3")}},
        },
    }


def current_hashes_are_h(monkeypatch) -> None:
    """The current config hash of every toy run is "h" (the real one needs a registered paper's configs)."""
    monkeypatch.setattr("pipelines.reports.table_report.current_hashes",
                        lambda params, paper, profile, table, runs: {(r["setting"], r["method"], r["seed"]): "h"
                                                                     for r in runs})


def write_toy_result(results_dir: Path, paper: str, table: str, setting: str, method: str, seed: int, acc: float,
                     profile: str = "cpu", config_hash: str = "h", git_sha: str = "a", wall_s: float = 1.0,
                     finished_at: str = "2024-01-01T00:00:00+00:00", **extra) -> Path:
    """One finished toy run at its RunKey path under results_dir (test accuracy `acc`); `extra` keys are
    added to (or override) the result's top level. Returns the path."""
    path = RunKey(paper, table, setting, method, seed).path(results_dir, profile)
    write_json_atomic(path, {
        "paper": paper, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "config_hash": config_hash, "git_sha": git_sha, "config": {}, "wall_s": wall_s, "finished_at": finished_at,
        "metrics": {"test_acc": acc, "best_dev_acc": 0.0, "best_epoch": 1, "steps_at_best": 1}, **extra})
    return path


def write_toy_results(results_dir: Path, paper: str, accuracies: dict, **fields) -> None:
    """`write_toy_result` for every (table, setting, method) -> [test accuracy of seed 0, 1, ...]."""
    for (table, setting, method), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            write_toy_result(results_dir, paper, table, setting, method, seed, acc, **fields)


def section(markdown: str, table: str) -> str:
    return markdown.split(f"## {table}:")[1].split("\n## ")[0]


def verdict_rows(markdown: str, table: str) -> dict[tuple[str, str], list[str]]:
    """(setting label, method label) -> the remaining cells of a report table row."""
    rows = {}
    for line in section(markdown, table).splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| ") and cells[0] not in ("setting", "---"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows
