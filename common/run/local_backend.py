"""Runs jobs inline (one worker) or in a spawn-based process pool on this machine.
"""
from __future__ import annotations

import dataclasses
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Iterator

from common.errors import ReproError
from common.run.allocator import keep_freed_memory
from common.run.job import Job, execute_job


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
