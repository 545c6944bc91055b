"""Expand (table, setting, method, seed) runs, skip finished ones, execute the rest on a backend.

A run is a fully resolved config dict; its hash is the cache key. A finished result with the
same hash is skipped; one with a different hash is a conflict (kept unless --replace-changed,
which archives it first). Runs whose config has `requires` (e.g. hu19 base_val needs the `base`
results) are resolved after the runs they depend on. Backends only map `execute_job` over jobs,
so a cluster backend can be added beside `LocalBackend` without touching the rest.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import os
import subprocess
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from common.allocator import keep_freed_memory
from common.config import config_hash
from common.errors import ReproError
from common.progress import progress_bar
from common.results import RunKey, archive_result, read_result, result_status, write_json_atomic

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


def _worker_init(threads: int) -> None:
    import torch

    keep_freed_memory()
    torch.set_num_threads(threads)


class LocalBackend:
    """Runs jobs inline (workers=1) or in a spawn-based process pool."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def map(self, jobs: list[Job]) -> Iterator[tuple[Job, dict | None, str | None]]:
        if self.workers == 1:
            for job in jobs:
                try:
                    yield job, execute_job(job), None
                except ReproError:
                    raise
                except Exception:  # keep going with other runs; the error is reported
                    yield job, None, traceback.format_exc()
            return
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(execute_job, dataclasses.replace(job, in_worker=True)): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    result = fut.result()
                except ReproError:  # bad data/config or a result conflict: stop, as the inline path does
                    for queued in futures:
                        queued.cancel()  # runs already started finish and keep their results
                    raise
                except Exception:
                    yield job, None, traceback.format_exc()
                    continue
                yield job, result, None


def make_backend(runner_cfg: dict) -> LocalBackend:
    """A backend for `base.runner`; anything with the same `map(jobs)` works (e.g. RayBackend)."""
    if runner_cfg["backend"] == "local":
        return LocalBackend(runner_cfg["workers"])
    if runner_cfg["backend"] == "ray":
        from common.config import runner_options
        from common.ray_backend import RayBackend  # lazy: ray is an optional dependency

        opts = runner_options(runner_cfg)
        return RayBackend(opts["ray_address"], num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"],
                          workers=opts["workers"])
    raise ReproError(f"base.runner.backend: unknown backend {runner_cfg['backend']!r}; expected 'local' or 'ray'")


@dataclass
class GridReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_grid(configs: Iterable[dict], *, paper_module: str, results_dir: Path, mirror: str | None,
             backend: LocalBackend, threads: int, resolve: Callable[[dict, list[dict]], dict] | None = None,
             split_path_for: Callable[[dict], Path] | None = None, replace_changed: bool = False,
             on_result: Callable[[dict], None] | None = None, dry_run: bool = False,
             progress: bool = False) -> GridReport:
    """Run every config whose result is missing; `requires` configs run after their dependencies."""
    sha = git_sha()
    report = GridReport()
    configs = list(configs)
    independent = [c for c in configs if "requires" not in c]
    dependent = [c for c in configs if "requires" in c]

    def plan(batch: list[dict]) -> list[Job]:
        jobs = []
        for c in batch:
            key = RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"])
            path = key.path(results_dir, c["profile"])
            h = config_hash(c)
            try:
                status = result_status(path, h)
            except ReproError:
                if not replace_changed:
                    raise
                if dry_run:
                    read_result(path)  # a dry run moves nothing (but a corrupt file fails as it would)
                else:
                    archive_result(path)
                status = "missing"
            if status == "done":
                report.skipped.append(key.label())
                continue
            split_path = str(split_path_for(c)) if split_path_for else None
            checkpoint = key.checkpoint_path(results_dir, c["profile"])
            jobs.append(Job(paper_module, c, str(path), mirror, threads, sha, split_path, progress, str(checkpoint)))
        return jobs

    def execute(jobs: list[Job]) -> None:
        if dry_run:
            report.done.extend(j.key.label() for j in jobs)
            return
        with progress_bar(len(jobs), "runs", "run", progress) as bar:
            for job, result, error in backend.map(jobs):
                bar.update(1)
                if error is not None:
                    report.failed[job.key.label()] = error
                    log.error("run %s failed:\n%s", job.key.label(), error)
                    continue
                report.done.append(job.key.label())
                log.info("finished %s: %s", job.key.label(), result["metrics"])
                if on_result:
                    on_result(result)

    execute(plan(independent))
    resolved = []
    for c in dependent:
        req = c["requires"]
        deps = []
        for seed in range(req["seeds"]):
            key = RunKey(c["paper"], c["table"], c["setting"], req["method"], seed)
            dep = read_result(key.path(results_dir, c["profile"]))
            if dep is None:
                break
            deps.append(dep)
        if len(deps) < req["seeds"]:
            report.failed[RunKey(c["paper"], c["table"], c["setting"], c["method"], c["seed"]).label()] = (
                f"needs all {req['seeds']} `{req['method']}` results of this setting first (have {len(deps)})")
            continue
        resolved.append(resolve(c, deps) if resolve else c)
    execute(plan(resolved))
    return report
