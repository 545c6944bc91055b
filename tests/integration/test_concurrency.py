"""Several `repro run` processes on the same grid at once: every result written once, valid, and equal
to a single-process run; no temp files left behind.

Concurrent processes share result files (create-only, atomic: a process that loses the race keeps the
winner's result, which has the same config hash and metrics) and each run's checkpoint file (a process
that starts a run another one is half-way through resumes from its checkpoint, which gives the same
numbers). A checkpoint write that another process's stale-temp-file cleanup interrupts must not fail
the run: the checkpoint is only a shortcut.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from common.run.results import REQUIRED_KEYS
from common.train.checkpoint import RunCheckpoint
from tests.conftest import REPO

N_PROCESSES = 4
METHODS = ("base", "base_val", "ren", "ours_weight")
SEEDS = 2


def grid_params(work: Path, mirror: str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(work / "results"), splits_dir=str(work / "splits"),
                          tracking_uri="none", data_mirror=mirror, profile="smoke")
    params["base"]["runner"].update(workers=1, threads_per_worker=1)
    params["hu19"]["profiles"]["smoke"]["table2"]["seeds"] = SEEDS
    work.mkdir(parents=True, exist_ok=True)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def start(params_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.cli", "--params", str(params_path), "run", "--profile", "smoke",
           "--table", "table2", "--workers", "1"]
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def results_of(results_dir: Path) -> dict[str, dict]:
    root = results_dir / "smoke/hu19/table2/not_pretrained"
    out = {}
    for method in METHODS:
        for seed in range(SEEDS):
            path = root / method / f"seed{seed}.json"
            assert path.is_file(), f"{path} missing"
            result = json.loads(path.read_text())
            missing = [k for k in REQUIRED_KEYS if k not in result]
            assert not missing, f"{path} lacks {missing}"
            out[f"{method}/seed{seed}"] = result
    return out


def test_four_processes_on_the_same_grid_match_a_single_process_run(tmp_path, mirror):
    from common.data.cifar10 import load_cifar10

    load_cifar10(mirror)  # fill the session's decoded-array cache once, before the processes share it
    shared = grid_params(tmp_path / "shared", mirror)
    t0 = time.time()
    procs = [start(shared) for _ in range(N_PROCESSES)]
    # the reference: the same grid in one process and another directory, run alongside
    reference_proc = start(grid_params(tmp_path / "single", mirror))
    outcomes = [finish(p) for p in procs]
    elapsed = time.time() - t0
    code, out, err = finish(reference_proc)
    assert code == 0, f"single-process run failed:\n{out}\n{err}"
    reference = results_of(tmp_path / "single" / "results")
    for i, (code, out, err) in enumerate(outcomes):
        assert code == 0, f"process {i} exited {code}:\n{out}\n{err}"

    results_dir = tmp_path / "shared" / "results"
    got = results_of(results_dir)
    assert len(got) == len(METHODS) * SEEDS == 8
    for label, result in got.items():
        assert result["config_hash"] == reference[label]["config_hash"], label
        assert result["metrics"] == reference[label]["metrics"], label
        assert result["history"] == reference[label]["history"], label
    # exactly the 8 result files, no archives and no temp files in the results tree
    files = sorted(p.relative_to(results_dir).as_posix() for p in results_dir.rglob("*") if p.is_file())
    assert len(files) == 8 and all(f.endswith(".json") and ".superseded-" not in f for f in files), files
    assert not list(results_dir.rglob(".*.tmp"))
    assert not list((tmp_path / "shared" / "splits").rglob(".*.tmp"))
    # finished runs leave no checkpoint (or checkpoint temp file) behind
    checkpoints = tmp_path / "shared" / ".checkpoints"
    assert not [p for p in checkpoints.rglob("*") if p.is_file()] if checkpoints.exists() else True
    # every run was done by someone: the processes' "done" counts cover the grid at least once
    done = [int(out.split("run(s) done")[0].split()[-1]) for _, out, _ in outcomes]
    assert sum(done) >= 8, done
    print(f"{N_PROCESSES} processes in {elapsed:.0f}s, runs done per process: {done}")


def test_checkpoint_write_survives_another_process_cleaning_temp_files(tmp_path, monkeypatch):
    """Process B starting a run deletes `.seed0.pt.*.tmp` files (left by killed runs); if that is the
    temp file process A is writing right now, A's checkpoint is lost, but A's run must go on."""
    path = tmp_path / "ckpt" / "seed0.pt"
    writer, other = RunCheckpoint(path, "h"), RunCheckpoint(path, "h")
    real_save = torch.save

    def save_then_other_process_starts(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        assert other.load() is None          # B's cleanup removes A's temp file mid-write
        assert not Path(f).exists()

    monkeypatch.setattr(torch, "save", save_then_other_process_starts)
    writer.save({"run": {"epoch_done": 1}})  # must not raise
    monkeypatch.setattr(torch, "save", real_save)
    assert not list(path.parent.glob(".*.tmp"))
    writer.save({"run": {"epoch_done": 2}})  # the next epoch's checkpoint is written normally
    assert other.load()["run"]["epoch_done"] == 2


def test_concurrent_split_and_result_writes_leave_no_temp_files(tmp_path):
    """Cheap check without training: many threads racing to write the same split file and result."""
    import threading

    import numpy as np

    from common.data.subsample import SplitSpec, load_or_make_split
    from common.io import write_json_atomic

    labels = np.tile(np.arange(10), 60)
    spec = SplitSpec("toy", tuple(range(10)), (4,) * 10, 2, 100)
    split_path = tmp_path / "splits" / "s.json"
    result_path = tmp_path / "results" / "seed0.json"
    records, wins, errors = [], [], []

    def worker():
        try:
            records.append(load_or_make_split(split_path, labels, np.arange(100) % 10, spec, 159))
            wins.append(write_json_atomic(result_path, {"config_hash": "h"}, exclusive=True))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r == records[0] for r in records) and sum(wins) == 1
    assert not list(tmp_path.rglob(".*.tmp"))
