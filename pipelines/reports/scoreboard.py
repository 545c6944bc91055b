"""reports/index.md: verdict counts per (paper, table) across the registry's papers."""
from __future__ import annotations

from pipelines.papers import ALL_PAPERS, PAPER_MODULES
from pipelines.reports.markdown import markdown_table
from pipelines.reports.table_report import TableReport

COUNTED_VERDICTS = ("OK", "SHAPE", "FAIL", "PENDING", "NOT RUN")


def verdict_counts(report: TableReport) -> dict[str, int]:
    """Number of published cells per counted verdict kind (`ref` rows and our variants are not counted)."""
    return {kind: sum(cell.verdict.kind == kind and not cell.variant for cell in report.cells)
            for kind in COUNTED_VERDICTS}


def log_verdict_count_dict(report: TableReport) -> dict[str, int]:
    """The verdicts against the official logs, counted like `verdict_counts` over the cells with a log."""
    return {kind: sum(cell.log_verdict is not None and cell.log_verdict.kind == kind and not cell.variant
                      for cell in report.cells) for kind in COUNTED_VERDICTS}


def log_verdict_counts(report: TableReport) -> str:
    """`log_verdict_count_dict` as text ('OK 2, FAIL 1'; '—' without logs)."""
    return ", ".join(f"{kind} {n}" for kind, n in log_verdict_count_dict(report).items() if n) or "—"


def scoreboard_papers(scoreboard: dict) -> list[str]:
    """The scoreboard's rows: every paper of the registry (planned ones first, in their order), then
    any other paper with a report."""
    return [*ALL_PAPERS, *sorted((set(PAPER_MODULES) | set(scoreboard)) - set(ALL_PAPERS))]


def render_index(scoreboard: dict[str, list[TableReport] | None], profile: str) -> str:
    """One row per (paper, table) with verdict counts; papers without tables are 'not started'."""
    rows = []
    for paper in scoreboard_papers(scoreboard):
        if scoreboard.get(paper) is None:
            rows.append([paper, "—", profile, "not started", *[""] * len(COUNTED_VERDICTS), "—", "—"])
        for r in scoreboard.get(paper) or []:
            like = {True: "yes", False: "no", None: "not configured"}[r.like_for_like]
            rows.append([paper, r.table, profile, like, *verdict_counts(r).values(), f"[{paper}.md]({paper}.md)",
                         log_verdict_counts(r)])
    header = ["paper", "table", "profile", "like-for-like?", *COUNTED_VERDICTS, "report", "vs official log"]
    return "\n".join(["# Replication scoreboard", "", f"Cell counts per table for the `{profile}` profile "
                      "(`ref` rows are not counted). The counts are verdicts against the paper's numbers; "
                      "`vs official log` counts the same cells' verdicts against the per-run logs the paper's "
                      "code published, where it did.", "", *markdown_table(header, rows)]) + "\n"
