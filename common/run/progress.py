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
