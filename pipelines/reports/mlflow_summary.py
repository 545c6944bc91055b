"""One MLflow summary run per reported table, updated in place by every report (common.run.tracking)."""
from __future__ import annotations

from pathlib import Path

from common.run.tracking import Tracker
from pipelines.reports.table_report import TableReport


def log_table_summaries(tracker: Tracker, paper: str, profile: str, reports: list[TableReport],
                        reports_dir: Path) -> None:
    """Per table: our mean/std/n and the verdict of every cell, with the report and figure attached."""
    for report in reports:
        cells = [{"setting": c.setting, "method": c.method, "mean": c.ours.mean if c.ours else None,
                  "std": c.ours.std if c.ours else None, "n": c.ours.n if c.ours else 0, "verdict": c.verdict.text}
                 for c in report.cells]
        artifacts = [reports_dir / f"{paper}.md", reports_dir / "figures" / f"{paper}_{report.table}.png"]
        tracker.log_table(paper, report.table, profile, cells, artifacts=artifacts)
