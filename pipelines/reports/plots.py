"""reports/plots/<paper>/<table>/<setting>/<method>.csv: per-epoch dev accuracy of a cell, for `dvc plots show`.

One small CSV per report cell that has a dev curve (dvc.yaml's top-level `plots:` renders each file
as one plot: x `epoch`, y `ours_dev_acc` and `paper_test_acc`). Columns:

    epoch            epoch of the `train` phase (a method's pretraining epochs are left out)
    ours_dev_acc     mean dev accuracy over the cell's counted runs (current config hash) at that
                     epoch (`stats.seed_stats`: runs without a finite value there do not count)
    paper_test_acc   the paper's mean test accuracy of the cell: a constant line, for scale
    n_runs           how many runs the mean is over (a diverged run stops early)

Cells without counted runs, or whose runs log no dev accuracy (`base_val` trains on train + dev),
get no file; files of cells that no longer qualify are removed. 4-decimal numbers, seed order, no
timestamps: an unchanged report writes byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.reports.metrics import rounded
from pipelines.reports.stats import Stats, seed_stats
from pipelines.reports.table_report import Cell, TableReport

PHASE = "train"
COLUMNS = ("epoch", "ours_dev_acc", "paper_test_acc", "n_runs")


def dev_curve(runs: list[dict]) -> list[tuple[int, Stats]]:
    """(epoch, Stats of dev_acc over the runs) per `train`-phase epoch with at least one finite value."""
    by_epoch: dict[int, list[float | None]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        for row in run.get("history") or []:
            if row.get("phase", PHASE) == PHASE and "dev_acc" in row:
                by_epoch.setdefault(int(row["epoch"]), []).append(row["dev_acc"])
    curve = [(epoch, seed_stats(values)) for epoch, values in sorted(by_epoch.items())]
    return [(epoch, stats) for epoch, stats in curve if stats.n]


def cell_csv(cell: Cell, curve: list[tuple[int, Stats]]) -> str:
    paper = repr(rounded(cell.paper.mean))
    lines = [",".join(COLUMNS)] + [f"{epoch},{rounded(stats.mean)!r},{paper},{stats.n}" for epoch, stats in curve]
    return "\n".join(lines) + "\n"


def write_plots(reports: list[TableReport], plots_dir: Path) -> list[Path]:
    """One CSV per cell with a dev curve under `plots_dir` (a paper's folder); stale CSVs there are
    removed. Returns the written paths in report order."""
    plots_dir = Path(plots_dir)
    written = []
    for report in reports:
        for cell in report.cells:
            runs = [r for r in report.runs if r["setting"] == cell.setting and r["method"] == cell.method]
            curve = dev_curve(runs)
            if not curve:
                continue
            path = plots_dir / report.table / cell.setting / f"{cell.method}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cell_csv(cell, curve))
            written.append(path)
    keep = set(written)
    for old in sorted(plots_dir.rglob("*.csv")) if plots_dir.exists() else []:
        if old not in keep:
            old.unlink()
    for folder in sorted((p for p in plots_dir.rglob("*") if p.is_dir()), reverse=True) if plots_dir.exists() else []:
        if not any(folder.iterdir()):
            folder.rmdir()
    plots_dir.mkdir(parents=True, exist_ok=True)
    return written
