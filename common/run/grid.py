"""Expand (table, setting, method, seed) runs, skip finished ones, execute the rest on a backend.

A run is a fully resolved config dict; its hash is the cache key. A finished result with the
same hash is skipped; one with a different hash is a conflict (kept unless --replace-changed,
which archives it first). Runs whose config has `requires` (e.g. hu19 base_val needs the `base`
results) are resolved after the runs they depend on. Backends only map `execute_job` over jobs,
so a cluster backend can be added beside `LocalBackend` without touching the rest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from common.config import config_hash
from common.errors import ReproError
from common.run.job import Job, git_sha
from common.run.local_backend import LocalBackend
from common.run.progress import progress_bar
from common.run.results import RunKey, archive_result, read_result, result_status

log = logging.getLogger("repro.runner")


def make_backend(runner_cfg: dict) -> LocalBackend:
    """A backend for `base.runner`; anything with the same `map(jobs)` works (e.g. RayBackend)."""
    if runner_cfg["backend"] == "local":
        return LocalBackend(runner_cfg["workers"])
    if runner_cfg["backend"] == "ray":
        from common.config import runner_options
        from common.run.ray_backend import RayBackend

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
