"""One run as a job: the config, where its result goes, and the code that made it.

`execute_job` imports the paper module, runs the config and writes the result atomically and
create-only (a concurrent worker's identical result is kept, a different one is a conflict).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_hash
from common.errors import ReproError
from common.io import write_file_atomic, write_json_atomic
from common.run.allocator import keep_freed_memory
from common.run.environment import runtime_environment
from common.run.progress import eta_text, progress_bar
from common.run.results import RunKey, read_result

log = logging.getLogger("repro.runner")


# pipeline outputs: edits there do not make the code dirty (dvc.lock: `dvc repro` rewrites it after each stage,
# before the next stage's `repro run` starts)
GENERATED_PATHS = ("results", "reports", "splits", "dvc.lock")
CODE_DIRS = ("common", "papers", "pipelines")          # an untracked .py file here is code a run may import
REPO_DIR = Path(__file__).resolve().parents[2]         # the checkout whose code the runs import
_GIT_DIFF = ("diff", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
             "--src-prefix=a/", "--dst-prefix=b/")


class DirtyTreeError(ReproError):
    """A publishable grid (profile `cpu` or `paper`) would run code that no commit holds."""


@dataclass(frozen=True)
class CodeState:
    """Which code a run executes: HEAD and, on a dirty tree, the changes on top of it.

    `diff` (bytes, `git apply`-able on `head` from the top of the checkout) holds the tracked
    changes outside `GENERATED_PATHS` and the untracked .py files under `CODE_DIRS`; None on a clean
    tree or when it was not asked for."""

    head: str | None                      # None: not a git checkout with a commit, or no git
    dirty_paths: tuple[str, ...] = ()
    diff: bytes | None = None

    @property
    def known(self) -> bool:
        return self.head is not None

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_paths)

    @property
    def sha(self) -> str:
        """What results record as `git_sha`."""
        if self.head is None:
            return "unknown"
        return self.head + ("-dirty" if self.dirty else "")

    @property
    def diff_sha256(self) -> str | None:
        return hashlib.sha256(self.diff).hexdigest() if self.diff else None


def _git(top: str | os.PathLike, *args: str, ok_codes=(0,)) -> bytes:
    proc = subprocess.run(["git", *args], cwd=top, capture_output=True)
    if proc.returncode not in ok_codes:
        raise subprocess.CalledProcessError(proc.returncode, ["git", *args], proc.stdout, proc.stderr)
    return proc.stdout


def code_state(cwd: str | os.PathLike = REPO_DIR, *, with_diff: bool = True) -> CodeState:
    """HEAD, the dirty paths (tracked files outside `GENERATED_PATHS` that differ from HEAD, then
    untracked .py files under `CODE_DIRS`) and, with `with_diff` on a dirty tree, their diff."""
    try:
        top = _git(cwd, "rev-parse", "--show-toplevel").decode().strip()
        head = _git(top, "rev-parse", "--verify", "HEAD").decode().strip()
        outside = ["--", ".", *(f":(exclude,top){p}" for p in GENERATED_PATHS)]
        tracked = [p for p in _git(top, "diff", "HEAD", "--name-only", "--no-renames", "-z", *outside)
                   .decode().split("\0") if p]
        untracked = [p for p in _git(top, "ls-files", "-z", "--others", "--exclude-standard", "--",
                                     *(f":(glob,top){d}/**/*.py" for d in CODE_DIRS)).decode().split("\0") if p]
        diff = None
        if with_diff and (tracked or untracked):
            diff = _git(top, *_GIT_DIFF, "HEAD", *outside)
            for path in sorted(untracked):      # as new files, so `git apply` re-creates them
                diff += _git(top, *_GIT_DIFF, "--no-index", "--", "/dev/null", path, ok_codes=(0, 1))
    except (subprocess.CalledProcessError, FileNotFoundError, UnicodeDecodeError):
        return CodeState(None)
    return CodeState(head, tuple(tracked) + tuple(sorted(untracked)), diff)


def git_sha(cwd: str | os.PathLike = REPO_DIR) -> str:
    """HEAD's sha, with `-dirty` when the code differs from it (see `code_state`: edits to pipeline
    outputs, e.g. result files committed while runs go on, do not count); "unknown" outside git."""
    return code_state(cwd, with_diff=False).sha


def code_diff_path(result_path: str | os.PathLike, diff_sha256: str) -> Path:
    """Where the diff of a run from a dirty tree is kept: shared by content hash per table,
    <results>/<profile>/<paper>/<table>/code_diffs/<sha256>.diff (results are
    <table>/<setting>/<method>/seed<k>.json)."""
    return Path(result_path).parents[2] / "code_diffs" / f"{diff_sha256}.diff"


def write_code_diff(result_path: str | os.PathLike, diff: bytes) -> Path:
    """Store `diff` under its content hash beside the table's results (atomic, create-only: a file
    of that name already holds these bytes)."""
    path = code_diff_path(result_path, hashlib.sha256(diff).hexdigest())
    if not path.exists():
        write_file_atomic(path, lambda tmp: tmp.write_bytes(diff), exclusive=True)
    return path


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
    code_diff: bytes | None = None  # a dirty tree's changes on top of `git_sha` (see `code_state`)
    key: RunKey = field(init=False)

    def __post_init__(self):
        c = self.config
        self.key = RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"])

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def wall_clock_path(checkpoint_path: str) -> Path:
    """The sidecar beside a run's checkpoint: the config hash and the wall seconds spent before the last epoch
    boundary (JSON)."""
    return Path(checkpoint_path + ".wall_s")


def prior_wall_s(checkpoint_path: str | None, config_hash: str) -> float:
    """Wall seconds a killed earlier attempt of this config spent up to its last epoch boundary (0 if fresh).

    Counted only while its checkpoint exists and the sidecar names the same config hash: a run whose
    checkpoint is gone, or belongs to another config (the run then starts over), starts its clock at 0.
    An unreadable sidecar counts as 0 with a warning (the time is a record, not a result)."""
    if not checkpoint_path or not Path(checkpoint_path).exists():
        return 0.0
    sidecar = wall_clock_path(checkpoint_path)
    if not sidecar.exists():
        return 0.0
    try:
        record = json.loads(sidecar.read_text())
        if isinstance(record, (int, float)):   # written before the sidecar named its config: trust the checkpoint
            record = {"config_hash": config_hash, "wall_s": record}
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object with config_hash and wall_s, got {record!r}")
        value = float(record["wall_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable wall-time record (%s); wall_s counts this attempt only", sidecar, exc)
        return 0.0
    if record.get("config_hash") != config_hash:
        log.info("%s: wall time of another config (%s); the clock starts at 0", sidecar, record.get("config_hash"))
        return 0.0
    return value if value >= 0 else 0.0


def execute_job(job: Job) -> dict:
    """Run one job in this process and write its result file (create-only, atomic).

    `wall_s` is the run's whole wall time: a run resumed from its checkpoint adds the time its earlier
    attempts spent up to their last epoch boundary (`resumed_wall_s` records that part); the work an attempt
    lost after its last checkpoint is redone, so it is counted once."""
    import torch

    keep_freed_memory()
    torch.set_num_threads(job.threads)
    module = importlib.import_module(job.paper_module)
    prior = prior_wall_s(job.checkpoint_path, job.config_hash)
    start = time.time()

    c = job.config
    n_epochs = c.get("epochs", 0) + c.get("pretrain_epochs", 0) if "fixed_steps" not in c else None
    bar = progress_bar(n_epochs, job.key.label(), "epoch", job.progress and not job.in_worker, position=1,
                       leave=False)

    epochs_seen = []

    def report_epoch(row: dict) -> None:
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        epochs_seen.append(row.get("epoch"))
        if job.checkpoint_path:   # the epoch's checkpoint is saved with it: record the clock beside it
            try:
                write_file_atomic(wall_clock_path(job.checkpoint_path),
                                  lambda tmp: tmp.write_text(json.dumps(
                                      {"config_hash": job.config_hash,
                                       "wall_s": round(prior + time.time() - start, 2)})))
            except OSError as exc:
                log.warning("%s: wall-time record not written (%s)", wall_clock_path(job.checkpoint_path), exc)
        if job.progress and job.in_worker:   # epochs done in all (a resumed run starts past 0) / done here
            done = (row["epoch"] + (c.get("pretrain_epochs", 0) if row.get("phase") == "train" else 0)
                    if isinstance(row.get("epoch"), int) else len(epochs_seen))
            eta = eta_text(done, n_epochs or 0, time.time() - start, len(epochs_seen))
            print(f"[{job.key.label()}] {values} ({eta})", flush=True)
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
        "wall_s": round(prior + time.time() - start, 2), "threads": job.threads, "device": outcome.get("device", "cpu"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": runtime_environment(),
    }
    if prior:
        result["resumed_wall_s"] = round(prior, 2)
    # anything else a paper's run returns (e.g. diverged, an augmenter's fit history, Figure 2 data)
    result.update({k: v for k, v in outcome.items() if k not in ("metrics", "history", "train_s", "device")
                   and k not in result})
    if job.code_diff:   # the diff is stored before the result that names it (a clean tree stores nothing)
        result["code_diff_sha256"] = write_code_diff(job.result_path, job.code_diff).stem
    written = write_json_atomic(Path(job.result_path), result, exclusive=True)
    if job.checkpoint_path:
        Path(job.checkpoint_path).unlink(missing_ok=True)
        wall_clock_path(job.checkpoint_path).unlink(missing_ok=True)
    if not written:
        existing = read_result(Path(job.result_path))
        if existing["config_hash"] != job.config_hash:
            raise ReproError(f"{job.result_path}: another worker wrote a result with a different config hash")
        return existing  # a concurrent worker finished the same run first: keep theirs
    return result
