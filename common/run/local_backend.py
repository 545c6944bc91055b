"""Runs jobs inline (one worker) or in a spawn-based process pool on this machine.

Each pooled run gets a fresh worker process (`max_tasks_per_child=1`): the allocator settings of
`common.run.allocator` keep a process's freed memory for reuse, so a worker that ran the largest
run would otherwise hold that run's peak (~9 GB for an RTE multi-view run) for the rest of the
grid. The price is one interpreter start and import per run (seconds, against runs of minutes).
"""
from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from common.errors import ReproError
from common.run.job import Job, execute_job


def fresh_process_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-based pool of `workers` processes, each replaced after one task."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1)


class LocalBackend:
    """Runs jobs inline (workers=1) or in a spawn-based pool, one fresh process per run."""

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
        with fresh_process_pool(self.workers) as pool:
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
