"""The local pool gives every run a fresh process, so no run inherits another run's peak memory."""
import os

from common.run.local_backend import fresh_process_pool


def test_each_pooled_task_runs_in_a_new_process():
    with fresh_process_pool(2) as pool:
        pids = [f.result() for f in [pool.submit(os.getpid) for _ in range(4)]]
    assert len(set(pids)) == 4 and os.getpid() not in pids
