"""Expand (table, setting, method, seed) runs, skip finished ones, execute the rest on a backend.

A run is a fully resolved config dict; its hash is the cache key. A finished result with the
same hash is skipped; one with a different hash is a conflict (kept unless --replace-changed,
which archives it first). Runs whose config has `requires` (e.g. hu19 base_val needs the `base`
results) are resolved after the runs they depend on. Backends only map `execute_job` over jobs,
so a cluster backend can be added beside `LocalBackend` without touching the rest.

Provenance: a grid of a publishable profile (anything but `smoke`) does not start a run from a
dirty tree (see `common.run.job.code_state`) unless `allow_dirty`. A run from a dirty tree (allowed,
or `smoke`) records `code_diff_sha256` and its diff is stored once per table by content hash
(`code_diff_path`), so `git apply` on the recorded HEAD rebuilds the code. The config hash never
includes the diff, and a clean tree stores nothing extra.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.config import config_hash
from common.errors import ReproError
from common.run.job import (
    CODE_DIRS,
    GENERATED_PATHS,
    REPO_DIR,
    CodeState,
    DirtyTreeError,
    Job,
    code_state,
    write_code_diff,
)
from common.run.local_backend import LocalBackend
from common.run.progress import progress_bar
from common.run.results import RunKey, archive_result, made_by_dirty_code, read_result, result_status

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
             progress: bool = False, allow_dirty: bool = False, code_dir: Path | None = None,
             replace_dirty: bool = False) -> GridReport:
    """Run every config whose result is missing; `requires` configs run after their dependencies.

    `replace_changed`: archive results of another config hash and run them again; `replace_dirty`: the
    same for finished results that uncommitted code made (git_sha `<sha>-dirty` or `unknown`), so a
    published table can be rebuilt from committed code only. `code_dir`: the checkout whose state
    results record (default: the one this package is in)."""
    state = code_state(code_dir or REPO_DIR, with_diff=not dry_run)
    sha = state.sha
    report = GridReport()
    configs = list(configs)
    checked = []

    def may_run(c: dict) -> None:
        """Raise before the first run (or archive) of a publishable profile from a dirty tree."""
        if checked or dry_run:
            return
        if c["profile"] != "smoke" and not allow_dirty:
            refuse_dirty(state, c["profile"], code_dir or REPO_DIR)
        checked.append(True)
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
                    may_run(c)
                    archive_result(path)
                status = "missing"
            if status == "done" and replace_dirty and made_by_dirty_code(read_result(path)):
                if not dry_run:
                    may_run(c)
                    archive_result(path)
                status = "missing"
            if status == "done":
                report.skipped.append(key.label())
                continue
            may_run(c)
            split_path = str(split_path_for(c)) if split_path_for else None
            checkpoint = key.checkpoint_path(results_dir, c["profile"])
            jobs.append(Job(paper_module, c, str(path), mirror, threads, sha, split_path, progress, str(checkpoint),
                            code_diff=state.diff))
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
                if state.diff and result.get("code_diff_sha256") == state.diff_sha256:
                    write_code_diff(job.result_path, state.diff)   # the driver's copy (a remote node wrote its own)
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


def refuse_dirty(state: CodeState, profile: str, code_dir: Path, shown: int = 5) -> None:
    """Raise `DirtyTreeError` if `state` cannot say which code made a `profile` result."""
    if not state.known:
        raise DirtyTreeError(
            f"cannot tell which code would make these {profile!r} results: {code_dir} is not a git checkout "
            "with a commit (or git is not installed). Install the package from a git checkout (pip install -e .), "
            "or pass --allow-dirty to run anyway (results then record git_sha 'unknown')")
    if not state.dirty:
        return
    paths = state.dirty_paths
    more = f" (and {len(paths) - shown} more)" if len(paths) > shown else ""
    generated = ", ".join(p if "." in p else p + "/" for p in GENERATED_PATHS)
    raise DirtyTreeError(
        f"refusing to run {profile!r}-profile results from a dirty tree: {', '.join(paths[:shown])}{more} "
        f"differ from HEAD {state.head[:12]} (tracked files outside {generated}, or untracked .py files "
        f"under {', '.join(p + '/' for p in CODE_DIRS)}), so a result could not say which "
        "code made it. Either commit the changes (git commit) and run again, or pass --allow-dirty to run "
        "anyway: each result then records code_diff_sha256 and the diff is kept in "
        "<results_dir>/<profile>/<paper>/<table>/code_diffs/<sha256>.diff (git apply it on the recorded HEAD)")
