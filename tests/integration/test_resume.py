"""Crash safety: a run killed at any point resumes to exactly the metrics of an uninterrupted run."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch import nn

from common.train.batches import ArrayData
from common.train.checkpoint import RunCheckpoint
from common.train.loop import NonFiniteError, fit_fixed_steps, fit_with_dev_selection
from tests.conftest import REPO


class Interrupt(Exception):
    pass


def toy_problem(seed=0):
    torch.manual_seed(seed)
    train = ArrayData(torch.randn(40, 3, 4, 4), torch.randint(0, 3, (40,)))
    dev = ArrayData(torch.randn(10, 3, 4, 4), torch.randint(0, 3, (10,)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return train, dev, model, opt


def make_step(model, opt, fail_at=None, counter=None):
    def step(batch):
        if counter is not None:
            counter[0] += 1
            if fail_at is not None and counter[0] == fail_at:
                raise Interrupt
        model.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(batch.x), batch.y)  # dropout uses the global torch RNG
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def run_selection(ckpt, fail_at=None):
    train, dev, model, opt = toy_problem()
    gen = torch.Generator().manual_seed(0)
    return fit_with_dev_selection(model, train, dev, dev, batch_size=8, epochs=6, pretrain_epochs=2,
                                  step=make_step(model, opt, fail_at, [0]), seed_generator=gen,
                                  stateful={"optimizer": opt}, checkpoint=ckpt)


@pytest.mark.parametrize("fail_at", [3, 11, 17, 26, 38])
def test_dev_selection_resumes_identically(tmp_path, fail_at):
    reference = run_selection(None)
    ckpt = RunCheckpoint(tmp_path / "run.pt", "h")
    with pytest.raises(Interrupt):
        run_selection(ckpt, fail_at)
    resumed = run_selection(ckpt)
    assert (resumed.test_acc, resumed.best_epoch, resumed.steps_at_best) == \
        (reference.test_acc, reference.best_epoch, reference.steps_at_best)
    assert resumed.history == reference.history


def test_fixed_steps_resumes_identically(tmp_path):
    def go(ckpt, fail_at=None):
        train, _, model, opt = toy_problem()
        return fit_fixed_steps(model, train, train, batch_size=8, total_steps=17,
                               seed_generator=torch.Generator().manual_seed(1),
                               step=make_step(model, opt, fail_at, [0]), stateful={"optimizer": opt}, checkpoint=ckpt)
    reference = go(None)
    ckpt = RunCheckpoint(tmp_path / "run.pt", "h")
    with pytest.raises(Interrupt):
        go(ckpt, 12)
    resumed = go(ckpt)
    assert resumed.test_acc == reference.test_acc and resumed.history == reference.history
    assert resumed.steps_at_best == 17


def test_checkpoint_of_other_config_or_corrupt_is_ignored(tmp_path):
    RunCheckpoint(tmp_path / "run.pt", "a").save({"run": {"epoch_done": 3}})
    assert RunCheckpoint(tmp_path / "run.pt", "a").load()["run"]["epoch_done"] == 3
    assert RunCheckpoint(tmp_path / "run.pt", "b").load() is None
    (tmp_path / "run.pt").write_bytes(b"truncated")
    assert RunCheckpoint(tmp_path / "run.pt", "a").load() is None
    (tmp_path / ".run.pt.x.tmp").write_bytes(b"partial")
    RunCheckpoint(tmp_path / "run.pt", "a").load()
    assert not (tmp_path / ".run.pt.x.tmp").exists()


def test_nan_loss_ends_training_as_diverged_and_keeps_best_dev_result(tmp_path):
    train, dev, model, opt = toy_problem()
    calls = [0]

    def step(batch):
        calls[0] += 1
        return float("nan") if calls[0] == 12 else make_step(model, opt)(batch)

    ckpt = RunCheckpoint(tmp_path / "run.pt", "h")
    fit = fit_with_dev_selection(model, train, dev, dev, batch_size=8, epochs=4, step=step,
                                 seed_generator=torch.Generator().manual_seed(0), stateful={"optimizer": opt},
                                 checkpoint=ckpt)
    # 5 steps per epoch: the 12th is in epoch 3; epochs 1-2 were scored, 4 never ran
    assert fit.diverged["epoch"] == 3 and "training loss is not finite" in fit.diverged["reason"]
    assert 1 <= fit.best_epoch <= 2 and math.isfinite(fit.test_acc)
    assert [r.get("diverged") is not None for r in fit.history] == [False, False, True]
    assert calls[0] == 12
    # resuming a diverged run does not train again and gives the same result
    again = fit_with_dev_selection(model, train, dev, dev, batch_size=8, epochs=4, step=step,
                                   seed_generator=torch.Generator().manual_seed(0), stateful={"optimizer": opt},
                                   checkpoint=ckpt)
    assert calls[0] == 12 and again.diverged == fit.diverged and again.test_acc == fit.test_acc


def test_nan_loss_in_pretraining_is_an_error(tmp_path):
    train, dev, model, opt = toy_problem()

    def nan_step(batch):
        return float("nan")

    with pytest.raises(NonFiniteError, match="training loss is not finite"):
        fit_with_dev_selection(model, train, dev, dev, batch_size=8, epochs=2, step=make_step(model, opt),
                               seed_generator=torch.Generator().manual_seed(0), pretrain_epochs=1,
                               pretrain_step=nan_step)


# --- real runs killed with SIGKILL -----------------------------------------------------------

def kill_params(tmp_path, mirror):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                          tracking_uri="none", data_mirror=mirror, profile="smoke")
    params["base"]["runner"].update(workers=1, threads_per_worker=1)
    table = params["hu19"]["profiles"]["smoke"]["table2"]
    table.update(epochs=5, seeds=1)
    table["weighting"]["pretrain_epochs"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def repro(params_path, *extra, **popen):
    cmd = [sys.executable, "-m", "pipelines.cli", "--params", str(params_path), "run", "--table", "table2",
           "--method", "ours_weight", "--seed", "0", *extra]
    env = {**os.environ, "REPRO_PROGRESS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            **popen)


def finished_result(tmp_path):
    path = tmp_path / "results/smoke/hu19/table2/not_pretrained/ours_weight/seed0.json"
    result = json.loads(path.read_text())
    return result["metrics"], result["history"]


def kill_and_resume(tmp_path, mirror, rng, n_points):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    assert repro(kill_params(reference_dir, mirror)).wait(timeout=600) == 0
    reference = finished_result(reference_dir)
    for i in range(n_points):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        params = kill_params(work, mirror)
        proc = repro(params)
        after_epochs = rng.randint(0, 6)   # 7 epochs in all (2 pretrain + 5)
        seen = 0
        while seen < after_epochs:
            line = proc.stdout.readline()
            if not line:
                break
            seen += "phase=" in line
        time.sleep(rng.uniform(0.0, 1.0))  # land anywhere inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert repro(params).wait(timeout=600) == 0
        assert finished_result(work) == reference, f"kill point {i} (after {after_epochs} epochs)"
        assert not list((work / ".checkpoints").rglob("*.pt")), "checkpoint removed once the result exists"


def test_sigkill_at_5_points_resumes_to_identical_metrics(tmp_path, mirror):
    kill_and_resume(tmp_path, mirror, random.Random(5), 5)


@pytest.mark.slow
def test_sigkill_at_20_points_resumes_to_identical_metrics(tmp_path, mirror):
    kill_and_resume(tmp_path, mirror, random.Random(20), 20)


def test_fit_outcome_assembles_metrics_history_and_divergence():
    from common.train.loop import FitResult
    fit = FitResult(best_dev_acc=40.0, test_acc=37.5, best_epoch=3, steps_at_best=120, history=[{"epoch": 1}],
                    diverged={"epoch": 5, "reason": "NaN"})
    out = fit.outcome(n_train=400, n_dev=20, n_test=10000, wall_s=12.0, device="cpu",
                      extra_metrics={"phi_max": 2.5}, figure2={"epoch_1": {}})
    assert out["metrics"] == {"test_acc": 37.5, "best_dev_acc": 40.0, "best_epoch": 3, "steps_at_best": 120,
                              "n_train": 400, "n_dev": 20, "n_test": 10000, "phi_max": 2.5}
    assert out["diverged"] == {"epoch": 5, "reason": "NaN"} and out["figure2"] == {"epoch_1": {}}
    assert out["history"] == [{"epoch": 1}] and out["train_s"] == 12.0 and out["device"] == "cpu"
    never = FitResult(best_dev_acc=0.0, test_acc=math.nan, best_epoch=0, steps_at_best=0)
    out = never.outcome(n_train=1, n_dev=1, n_test=1, wall_s=0.0, device="cpu")
    assert out["metrics"]["note"] == "dev accuracy never improved; no test evaluation" and "diverged" not in out


FAKE_PAPER = '''
import time
from pathlib import Path

def execute(config, mirror, *, on_epoch, split_path=None, checkpoint_path=None):
    ckpt = Path(checkpoint_path)
    first = 0 if not ckpt.exists() else int(ckpt.read_text())
    for epoch in range(first, 4):
        time.sleep(0.3)
        ckpt.write_text(str(epoch + 1))          # the epoch's checkpoint, then its report
        on_epoch({"epoch": epoch})
        if config.get("die_after") == epoch and first == 0:
            raise KeyboardInterrupt              # killed after two epochs
    return {"metrics": {"test_acc": 1.0}, "history": []}
'''


def test_resumed_run_records_its_whole_wall_time(tmp_path, monkeypatch):
    """wall_s of a killed-and-resumed run = the killed attempt's time to its last checkpoint + the resumed
    attempt's time (each epoch sleeps 0.3 s: 4 epochs ~ 1.2 s), not the resumed attempt's time alone."""
    from common.run.job import Job, execute_job, wall_clock_path
    (tmp_path / "fake_wall_paper.py").write_text(FAKE_PAPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"paper": "fake", "table": "t", "setting": "s", "method": "m", "seed": 0, "profile": "smoke",
              "die_after": 1}
    ckpt = tmp_path / "ck" / "seed0.pt"
    ckpt.parent.mkdir()
    job = Job("fake_wall_paper", config, str(tmp_path / "out" / "seed0.json"), None, 1, "sha",
              checkpoint_path=str(ckpt))
    with pytest.raises(KeyboardInterrupt):
        execute_job(job)
    record = json.loads(wall_clock_path(str(ckpt)).read_text())
    assert ckpt.read_text() == "2" and record["wall_s"] >= 0.6 and record["config_hash"] == job.config_hash
    result = execute_job(job)
    assert result["resumed_wall_s"] >= 0.6
    from common.run.environment import runtime_environment
    assert result["environment"] == runtime_environment()        # library builds and CPU, for tracing
    assert result["wall_s"] >= 1.2 - 1e-6 and result["wall_s"] - result["resumed_wall_s"] >= 0.6
    assert not ckpt.exists() and not wall_clock_path(str(ckpt)).exists()   # both removed with the result
    # a fresh run (no checkpoint) ignores a stray clock file
    wall_clock_path(str(ckpt)).write_text(json.dumps({"config_hash": job.config_hash, "wall_s": 999}))
    job2 = Job("fake_wall_paper", {**config, "seed": 1, "die_after": None}, str(tmp_path / "out" / "seed1.json"),
               None, 1, "sha", checkpoint_path=str(ckpt))
    fresh = execute_job(job2)
    assert "resumed_wall_s" not in fresh and fresh["wall_s"] < 100


def test_wall_time_of_another_config_is_not_counted(tmp_path):
    """A checkpoint left by another config is discarded and the run starts over: so does its clock."""
    from common.run.job import prior_wall_s, wall_clock_path
    ckpt = tmp_path / "seed0.pt"
    ckpt.write_text("2")
    wall_clock_path(str(ckpt)).write_text(json.dumps({"config_hash": "old", "wall_s": 500.0}))
    assert prior_wall_s(str(ckpt), "new") == 0.0
    assert prior_wall_s(str(ckpt), "old") == 500.0
    wall_clock_path(str(ckpt)).write_text("[1, 2]")        # unreadable: counts 0, the run goes on
    assert prior_wall_s(str(ckpt), "old") == 0.0
    wall_clock_path(str(ckpt)).write_text("42.5")          # a bare number (older sidecars): counted
    assert prior_wall_s(str(ckpt), "old") == 42.5
