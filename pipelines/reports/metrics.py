"""reports/metrics/<paper>.json: a paper report's cells as DVC metrics (`dvc metrics show`, `dvc metrics diff`).

The same cells and verdicts as reports/<paper>.md (`table_report.build_table`: counted results only,
i.e. those of the current config hash). Layout, keys sorted:

    {"profile": "cpu",
     "<table>": {"cells": {"<setting>": {"<method>": {"n", "mean", "std", "verdict", "verdict_log"}}},
                 "verdicts": {"OK": 1, "SHAPE": 0, "FAIL": 2, "PENDING": 0, "NOT RUN": 3},
                 "verdicts_log": {...},      # only if the table has official-log cells
                 "not_counted": 0}}          # results of another config, listed in the report, not counted

Per cell: our n, mean and population std of test accuracy (mean/std absent while n is 0), the
verdict kind against the paper and, for cells with an `official_log`, against the log
(`verdict_log`). Per table: the scoreboard's verdict counts (published cells; `ref` rows and our
variants are not counted). Floats are rounded to `DECIMALS` places, so an unchanged report writes a
byte-identical file.
"""
from __future__ import annotations

from pathlib import Path

from common.io import write_json_atomic
from pipelines.reports.scoreboard import log_verdict_count_dict, verdict_counts
from pipelines.reports.table_report import Cell, TableReport

DECIMALS = 4


def rounded(value: float) -> float:
    """`value` to DECIMALS places; -0.0 becomes 0.0 (same bytes for the same number)."""
    return round(float(value), DECIMALS) + 0.0


def cell_metrics(cell: Cell) -> dict:
    """n, mean, std (mean/std only with a finite run) and the verdict kinds of one cell."""
    ours = cell.ours
    entry: dict = {"n": ours.n if ours is not None else 0, "verdict": cell.verdict.kind}
    if ours is not None and ours.n:
        entry |= {"mean": rounded(ours.mean), "std": rounded(ours.std)}
    if cell.log_verdict is not None:
        entry["verdict_log"] = cell.log_verdict.kind
    return entry


def table_metrics(report: TableReport) -> dict:
    """The cells of one table by setting and method, its verdict counts and its not-counted results."""
    cells: dict[str, dict] = {}
    for cell in report.cells:
        cells.setdefault(cell.setting, {})[cell.method] = cell_metrics(cell)
    entry = {"cells": cells, "verdicts": verdict_counts(report), "not_counted": len(report.stale)}
    if report.has_logs:
        entry["verdicts_log"] = log_verdict_count_dict(report)
    return entry


def paper_metrics(reports: list[TableReport], profile: str) -> dict:
    return {"profile": profile, **{report.table: table_metrics(report) for report in reports}}


def write_metrics(reports: list[TableReport], paper: str, profile: str, metrics_dir: Path) -> Path:
    """Write <metrics_dir>/<paper>.json (strict JSON, sorted keys, atomic); returns its path."""
    path = Path(metrics_dir) / f"{paper}.json"
    write_json_atomic(path, paper_metrics(reports, profile))
    return path
