"""Run the grid on a Ray cluster: one Ray task per run, same interface as `LocalBackend`.

`base.runner` selects it (`backend: ray`) with `ray_address` ("auto": the running cluster this
machine belongs to, "local": start a private one, "host:port" or "ray://host:port"), and the Ray
resources each run reserves (`num_cpus`, `num_gpus`; keep num_cpus = threads_per_worker).
`workers` caps how many runs are in flight at once, as it does for the local process pool.

Each task calls `common.run.grid.execute_job`, so result files are identical to local runs
(create-only, atomic, same config hash) and finished runs are skipped the same way. Failed runs
are collected with their traceback; a `ReproError` (bad data, bad config, result conflict) stops
the grid, as in the inline local path, and queued runs are cancelled.

What the nodes need: this package (same commit) installed in the Python that runs Ray, the data
at the driver's mirror path (shared storage) or `REPRO_DATA_MIRROR` pointing at a local copy, and
ideally the results directory on shared storage at the same absolute path as on the driver. Without
shared results storage each node writes its own copy and the driver also writes the returned result
into its own results directory, so the driver's tree is complete either way. Ray is imported lazily:
the local backend never needs it. No `runtime_env` is shipped; workers import the installed package.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

from common.errors import ReproError
from common.io import write_json_atomic
from common.run.job import Job, execute_job
from common.run.results import read_result

log = logging.getLogger("repro.ray")


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ReproError("base.runner.backend: 'ray' needs the ray package; install it with "
                         "`pip install -e \".[ray]\"` (or set backend: local)") from exc
    return ray


def _run_on_node(job: Job) -> tuple[dict, str]:
    """Body of one Ray task: run the job on this node; returns (result, node id)."""
    import ray

    node_mirror = os.environ.get("REPRO_DATA_MIRROR")
    if node_mirror and (job.mirror is None or not Path(job.mirror).is_dir()):
        job = dataclasses.replace(job, mirror=node_mirror)  # the driver's path does not exist here
    return execute_job(job), ray.get_runtime_context().get_node_id()


def _with_absolute_paths(job: Job) -> Job:
    paths = {name: str(Path(getattr(job, name)).absolute())
             for name in ("result_path", "split_path", "checkpoint_path") if getattr(job, name, None)}
    return dataclasses.replace(job, in_worker=True, **paths)


def keep_driver_copy(path: Path, result: dict) -> None:
    """Write a result returned by a remote node into the driver's results dir if it is not there.

    With shared storage the node already wrote it (no-op). Same create-only rule as execute_job.
    """
    if write_json_atomic(path, result, exclusive=True):
        return
    existing = read_result(path)
    if existing["config_hash"] != result["config_hash"]:
        raise ReproError(f"{path}: another worker wrote a result with a different config hash")


class RayBackend:
    """Maps `execute_job` over jobs as Ray tasks; yields (job, result, None) or (job, None, traceback)."""

    def __init__(self, address: str = "auto", *, num_cpus: float = 1, num_gpus: float = 0,
                 workers: int | None = None):
        self.address = address
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.workers = workers
        self.node_of: dict[str, str] = {}  # run label -> Ray node id that ran it (for logs and tests)

    def _connect(self, ray, log_to_driver: bool) -> None:
        if ray.is_initialized():  # once per process; an existing connection is reused
            return
        ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=log_to_driver)
        log.info("connected to Ray at %s: %s", self.address, ray.cluster_resources())

    def map(self, jobs: list[Job]) -> Iterator[tuple[Job, dict | None, str | None]]:
        jobs = list(jobs)
        if not jobs:
            return
        ray = _import_ray()
        self._connect(ray, log_to_driver=any(j.progress for j in jobs))
        task = ray.remote(_run_on_node).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                name="repro_run")
        queue = iter(jobs)
        in_flight: dict = {}  # ObjectRef -> Job

        def submit_next() -> None:
            job = next(queue, None)
            if job is not None:  # absolute paths: workers do not share the driver's cwd
                in_flight[task.remote(_with_absolute_paths(job))] = job

        for _ in range(self.workers or len(jobs)):
            submit_next()
        try:
            while in_flight:
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                job = in_flight.pop(ref)
                submit_next()  # keep the cluster busy while the driver handles this result
                try:
                    result, node = ray.get(ref)
                    keep_driver_copy(Path(job.result_path), result)
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, ReproError):
                        raise err.cause from err
                    yield job, None, traceback.format_exc()
                    continue
                except ReproError:
                    raise
                except Exception:  # worker or node died, task cancelled, ...: reported, grid goes on
                    yield job, None, traceback.format_exc()
                    continue
                self.node_of[job.key.label()] = node
                log.info("%s ran on Ray node %s", job.key.label(), node)
                yield job, result, None
        finally:
            for ref in in_flight:  # stopped early (ReproError or the caller closed us): drop queued runs
                ray.cancel(ref)
