"""One run as a job: the config, where its result goes, and the code that made it.

`execute_job` imports the paper module, runs the config and writes the result atomically and
create-only (a concurrent worker's identical result is kept, a different one is a conflict).
"""
from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_hash
from common.errors import ReproError
from common.io import write_json_atomic
from common.run.allocator import keep_freed_memory
from common.run.progress import progress_bar
from common.run.results import RunKey, read_result

log = logging.getLogger("repro.runner")


GENERATED_PATHS = ("results", "reports", "splits")   # pipeline outputs: edits there do not make the code dirty


def git_sha(cwd: str | os.PathLike = ".") -> str:
    """HEAD's sha, with `-dirty` when tracked files other than pipeline outputs (`GENERATED_PATHS`,
    e.g. result files committed while runs go on) differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude,top){p}" for p in GENERATED_PATHS)], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


@dataclass
class Job:
    """Everything a worker needs to run one config and write its result."""

    paper_module: str
    config: dict[str, Any]
    result_path: str
    mirror: str | None
    threads: int
    git_sha: str
    split_path: str | None = None
    progress: bool = False
    checkpoint_path: str | None = None
    in_worker: bool = False        # set by pooled backends: per-epoch lines instead of a bar
    key: RunKey = field(init=False)

    def __post_init__(self):
        c = self.config
        self.key = RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"])

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def execute_job(job: Job) -> dict:
    """Run one job in this process and write its result file (create-only, atomic)."""
    import torch

    keep_freed_memory()
    torch.set_num_threads(job.threads)
    module = importlib.import_module(job.paper_module)
    start = time.time()

    c = job.config
    n_epochs = c.get("epochs", 0) + c.get("pretrain_epochs", 0) if "fixed_steps" not in c else None
    bar = progress_bar(n_epochs, job.key.label(), "epoch", job.progress and not job.in_worker, position=1,
                       leave=False)

    def report_epoch(row: dict) -> None:
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        if job.progress and job.in_worker:
            print(f"[{job.key.label()}] {values} ({time.time() - start:.0f}s)", flush=True)
        bar.set_postfix_str(values, refresh=False)
        bar.update(1)

    try:
        outcome = module.execute(c, job.mirror, on_epoch=report_epoch,
                                 split_path=Path(job.split_path) if job.split_path else None,
                                 checkpoint_path=job.checkpoint_path)
    finally:
        bar.close()
    c = job.config
    result = {
        "paper": c["paper"], "table": c["table"], "setting": c["setting"], "method": c["method"],
        "seed": c["seed"], "profile": c["profile"], "config_hash": job.config_hash, "config": c,
        "git_sha": job.git_sha, "metrics": outcome["metrics"], "history": outcome["history"],
        "wall_s": round(time.time() - start, 2), "threads": job.threads, "device": outcome.get("device", "cpu"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # anything else a paper's run returns (e.g. diverged, an augmenter's fit history, Figure 2 data)
    result.update({k: v for k, v in outcome.items() if k not in ("metrics", "history", "train_s", "device")
                   and k not in result})
    written = write_json_atomic(Path(job.result_path), result, exclusive=True)
    if job.checkpoint_path:
        Path(job.checkpoint_path).unlink(missing_ok=True)
    if not written:
        existing = read_result(Path(job.result_path))
        if existing["config_hash"] != job.config_hash:
            raise ReproError(f"{job.result_path}: another worker wrote a result with a different config hash")
        return existing  # a concurrent worker finished the same run first: keep theirs
    return result
