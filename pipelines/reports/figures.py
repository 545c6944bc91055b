"""Report figures: paper vs ours bars per setting of a table (matplotlib, no pyplot state)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pipelines.reports.table_report import TableReport

PAPER_COLOUR, OURS_COLOUR = "#9aa5b1", "#1f77b4"


def figure_bars(report: TableReport, spec: dict, setting: str) -> tuple[list[str], list, list]:
    """One panel's x labels, and its paper and ours bars as (x, Stats): every published cell of the setting,
    then the `stated_in_text` methods we ran (ours only: the paper gives no number for them)."""
    cells = [c for c in report.cells if c.setting == setting]
    labels = [spec["methods"][c.method]["label"] for c in cells]
    paper_bars = list(enumerate(c.paper for c in cells))
    ours = [(x, c.ours) for x, c in enumerate(cells) if c.ours and c.ours.n]
    for method, stated in (spec.get("stated_in_text") or {}).items():
        stats = report.ours_stats.get((report.table, setting, method))
        if stats and stats.n:
            ours.append((len(labels), stats))
            labels.append(f"{stated['label']} (paper: text only)")
    return labels, paper_bars, ours


def draw_figure(report: TableReport, published: dict, paper: str, profile: str, path: Path) -> bool:
    """Grouped bars (paper vs ours, ± std; no error bar where the paper prints no std) per setting, then
    ours alone for the methods the paper states only in its text (`stated_in_text`: no number to draw);
    False (and no file) if the table has no results."""
    if not any(cell.ours and cell.ours.n for cell in report.cells):
        path.unlink(missing_ok=True)
        return False
    spec = published["tables"][report.table]
    settings = list(spec["results"])
    fig = Figure(figsize=(max(6.0, 4.0 * len(settings)), 4.8), dpi=100)
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, setting in zip(axes, settings):
        labels, paper_bars, ours = figure_bars(report, spec, setting)
        paper_err = [math.nan if s.std is None else s.std for _, s in paper_bars]   # nan: no error bar
        ax.bar([x - 0.2 for x, _ in paper_bars], [s.mean for _, s in paper_bars], 0.4, yerr=paper_err, capsize=3,
               color=PAPER_COLOUR)
        ax.bar([x + 0.2 for x, _ in ours], [s.mean for _, s in ours], 0.4, yerr=[s.std for _, s in ours],
               capsize=3, color=OURS_COLOUR)
        ax.set_xticks(range(len(labels)), [textwrap.fill(label, 28) for label in labels], rotation=30,
                      ha="right", fontsize=8)
        ax.set_title(textwrap.fill(spec["settings"][setting]["label"], 48), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.legend(handles=[Patch(color=PAPER_COLOUR, label="paper"), Patch(color=OURS_COLOUR, label=f"ours ({profile})")],
               loc="upper center", bbox_to_anchor=(0.5, 0.94), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{paper} {report.table}: {report.title}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return True
