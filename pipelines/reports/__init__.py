"""`repro report`: published numbers vs committed results, as markdown, figures and a scoreboard.

Per registered paper with a `paper_tables.yaml`: reports/<paper>.md (one verdict table per published
table), reports/figures/<paper>_<table>.png, the results section of papers/<paper>/README.md (between
`<!-- results:start -->` and `<!-- results:end -->`), and reports/index.md across all papers; for
DVC's own views, reports/metrics/<paper>.json (`dvc metrics show/diff`: per cell mean, std, n and
verdicts, per table verdict counts) and reports/plots/<paper>/<table>/<setting>/<method>.csv
(`dvc plots show`: per-epoch dev accuracy beside the paper's number), declared in dvc.yaml.
Verdicts: like-for-like tables compare means within two standard errors; tables whose profile
deviates from the `paper` profile compare only the paper's ordering against the table's reference
row (`reference: <method>` per table in paper_tables.yaml, default `base`). A published cell with
`std: null` (or no std) shows its mean only, and the like-for-like bound is then our two standard
errors alone; a cell's own `n` replaces the table's in the paper's standard error and its "(n)".
Output is deterministic: yaml order, 2-decimal numbers, fixed bootstrap seed, no timestamps.

Modules: `stats` (aggregates, verdict rules, ordering tests), `published` (paper_tables.yaml),
`table_report` (cells of one table), `markdown`, `figures`, `scoreboard` (index.md),
`metrics` and `plots` (the DVC views), `mlflow_summary`. A paper adds its own lines under a table
through its `report_sections` hook.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.errors import ConfigError
from common.run.results import collect_results
from common.run.tracking import Tracker
from pipelines.papers import PAPER_MODULES
from pipelines.reports.figures import draw_figure
from pipelines.reports.markdown import (
    ordering_check,
    ordering_rows,
    render_paper_report,
    render_table_section,
    update_readme,
)
from pipelines.reports.metrics import write_metrics
from pipelines.reports.mlflow_summary import log_table_summaries
from pipelines.reports.plots import write_plots
from pipelines.reports.published import PAPERS_DIR, load_published, with_variants
from pipelines.reports.scoreboard import COUNTED_VERDICTS, render_index, verdict_counts
from pipelines.reports.stats import (
    Stats,
    Verdict,
    aggregate,
    like_for_like_verdict,
    ordering_verdict,
    seed_stats,
)
from pipelines.reports.table_report import Cell, TableReport, build_table, table_deviations

REPORTS_DIR = Path("reports")

__all__ = [
    "COUNTED_VERDICTS", "PAPERS_DIR", "REPORTS_DIR", "Cell", "ConfigError", "Stats", "TableReport", "Verdict",
    "aggregate", "build_table", "draw_figure", "like_for_like_verdict", "load_published", "ordering_check",
    "ordering_rows", "ordering_verdict", "render_index", "render_table_section", "seed_stats", "table_deviations",
    "verdict_counts", "with_variants", "write_paper_report", "write_reports",
]


def write_paper_report(params: dict, profile: str, paper: str, published: dict,
                       papers_dir: Path) -> tuple[list[TableReport], list[Path]]:
    """reports/<paper>.md, its figures and the README results block; returns the tables and written paths."""
    results = collect_results(Path(params["base"]["results_dir"]), profile, paper)
    reports = [build_table(published, table, params, paper, profile, results) for table in published["tables"]]
    figures = [REPORTS_DIR / "figures" / f"{paper}_{r.table}.png" for r in reports]
    drawn = [fig for r, fig in zip(reports, figures) if draw_figure(r, published, paper, profile, fig)]

    def sections(figure_prefix: str) -> str:
        return "\n".join(render_table_section(r, published, profile, figure_prefix + fig.name if fig in drawn else None)
                         for r, fig in zip(reports, figures))

    report_path = REPORTS_DIR / f"{paper}.md"
    benchmarks = sorted((REPORTS_DIR / "benchmarks").glob(f"{paper}_*.json"))
    text_results = [r for r in results if r.get("config", {}).get("mlm_dir")]   # runs whose augmenter used the MLM
    mlm_path = REPORTS_DIR / "mlm" / f"{profile}.json" if text_results else None
    mlm_used = Counter((r.get("mlm") or {}).get("weights_sha256") for rep in reports for r in rep.runs
                       if r.get("config", {}).get("mlm_dir"))              # counted results only
    report_path.write_text(render_paper_report(published, profile, sections("figures/"), reports, benchmarks,
                                               mlm_path, dict(mlm_used)))
    readme = papers_dir / paper / "README.md"
    readme_updated = update_readme(readme, sections("../../reports/figures/").rstrip("\n"))
    return reports, [report_path, *drawn, *([readme] if readme_updated else [])]


def write_reports(params: dict, profile: str, log_tables: bool = True) -> list[Path]:
    """All paper reports, figures, README blocks, DVC metrics and plots, and reports/index.md; returns
    the written paths except the DVC metrics and plots files (reports/metrics/, reports/plots/)."""
    (REPORTS_DIR / "figures").mkdir(parents=True, exist_ok=True)
    tracker = Tracker(params["base"]["tracking_uri"]) if log_tables else None
    scoreboard: dict[str, list[TableReport] | None] = {}
    written: list[Path] = []
    # every paper_tables.yaml is loaded and checked first: a bad one stops the report before any file is written
    all_published = {paper: load_published(paper, PAPERS_DIR) for paper in PAPER_MODULES}
    for paper, published in all_published.items():
        if published is None:
            continue
        scoreboard[paper], paths = write_paper_report(params, profile, paper, published, PAPERS_DIR)
        written += paths
        write_metrics(scoreboard[paper], paper, profile, REPORTS_DIR / "metrics")
        write_plots(scoreboard[paper], REPORTS_DIR / "plots" / paper)
        if tracker is not None:
            log_table_summaries(tracker, paper, profile, scoreboard[paper], REPORTS_DIR)
    index = REPORTS_DIR / "index.md"
    index.write_text(render_index(scoreboard, profile))
    return written + [index]
