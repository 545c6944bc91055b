"""Progress bars with ETA (tqdm) for run grids and for the epochs of one run; quiet in CI.

Shown when stderr is a terminal and $CI is unset, or when REPRO_PROGRESS=1; REPRO_PROGRESS=0
silences them. Runs in worker processes print one line per epoch instead of a bar (bars from
several processes would overwrite each other).
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    flag = os.environ.get("REPRO_PROGRESS")
    if flag is not None:
        return flag == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(total: int, desc: str, unit: str, enabled: bool, position: int = 0, leave: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, position=position, leave=leave,
                dynamic_ncols=True, file=sys.stderr)


def eta_text(done: float, total: float, elapsed_s: float, done_here: float | None = None) -> str:
    """'12 s, ETA 3.4 min' for line-by-line progress (logs, worker processes): the remaining
    `total - done` units at the mean rate so far (`done_here` units in `elapsed_s`: fewer than `done`
    when a run resumed from a checkpoint); no ETA before the first unit is done."""
    def span(seconds: float) -> str:
        return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200
                else f"{seconds / 3600:.1f} h")
    done_here = done if done_here is None else done_here
    if done_here <= 0 or total <= done:
        return span(elapsed_s)
    return f"{span(elapsed_s)}, ETA {span(elapsed_s / done_here * (total - done))}"
