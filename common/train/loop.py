"""Training loop with per-epoch dev evaluation and test accuracy at the best-dev epoch.

As the hu19 official code: optional pretrain epochs (plain training, not eligible for model
selection), then `epochs` epochs; after each, dev accuracy; the test set is evaluated when dev
accuracy strictly improves (epoch >= min_epochs), so the reported test accuracy is the one at the
first best-dev epoch.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from common.errors import ReproError
from common.train.batches import ArrayData, Batch
from common.train.checkpoint import RunCheckpoint, capture, restore
from common.train.evaluation import accuracy


class NonFiniteError(ReproError):
    """A loss or meta-gradient became NaN/inf."""










def check_finite(value: float | Tensor, what: str) -> None:
    bad = not torch.isfinite(value).all() if isinstance(value, Tensor) else not math.isfinite(value)
    if bad:
        raise NonFiniteError(f"{what} is not finite (NaN/inf)")


@dataclass
class FitResult:
    best_dev_acc: float
    test_acc: float
    best_epoch: int                # 1-based epoch of the first best dev accuracy (0: none)
    steps_at_best: int             # optimizer steps taken (after pretraining) at that epoch
    history: list[dict] = field(default_factory=list)
    diverged: dict | None = None   # {"epoch", "reason"} when training stopped on a NaN/inf


    def outcome(self, *, n_train: int, n_dev: int, n_test: int, wall_s: float, device: str,
                extra_metrics: dict | None = None, **extra: Any) -> dict[str, Any]:
        """The run outcome the runner stores: metrics (test accuracy at the best dev epoch, data
        sizes, `extra_metrics`), per-epoch history, `diverged` when it did, and any `extra` keys."""
        metrics = {"test_acc": self.test_acc, "best_dev_acc": self.best_dev_acc, "best_epoch": self.best_epoch,
                   "steps_at_best": self.steps_at_best, "n_train": n_train, "n_dev": n_dev, "n_test": n_test,
                   **(extra_metrics or {})}
        if math.isnan(self.test_acc):
            metrics["note"] = "dev accuracy never improved; no test evaluation"
        result = {"metrics": metrics, "history": self.history, "train_s": wall_s, "device": device, **extra}
        if self.diverged:
            result["diverged"] = self.diverged
        return result


StepFn = Callable[[Batch], float]


def fit_with_dev_selection(model: nn.Module, train: ArrayData, dev: ArrayData, test: ArrayData, *,
                           batch_size: int, epochs: int, step: StepFn, seed_generator: torch.Generator,
                           pretrain_epochs: int = 0, pretrain_step: StepFn | None = None,
                           min_epochs: int = 0, on_epoch: Callable[[dict], None] | None = None,
                           stateful: dict[str, Any] | None = None,
                           checkpoint: RunCheckpoint | None = None) -> FitResult:
    """Pretrain epochs (not eligible for selection), then `epochs` epochs with dev evaluation.

    The test set is scored once, at the end, with the parameters of the first best-dev epoch
    (the official code scores it at every strict dev improvement: same number, fewer passes).
    With a checkpoint, state is saved after every epoch and a saved run resumes where it stopped.

    Divergence: a NaN/inf loss or meta-gradient in a (non-pretrain) epoch ends training there and
    is recorded in `diverged`; the result is the test accuracy at the best dev epoch before it.
    This is what the official loop reports when its weights overflow (a NaN model never beats the
    best dev accuracy again), made explicit instead of burning the remaining epochs on NaNs.
    """
    stateful = {"model": model, **(stateful or {})}
    run = {"epoch_done": 0, "steps": 0, "best_dev": -1.0, "best_epoch": 0, "steps_at_best": 0, "history": []}
    best_state = None
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        restore(saved, stateful, seed_generator)
        run, best_state = saved["run"], saved.get("best_state")

    last_epoch = run["epoch_done"] if run.get("diverged") else pretrain_epochs + epochs
    for epoch_index in range(run["epoch_done"] + 1, last_epoch + 1):
        pretraining = epoch_index <= pretrain_epochs
        epoch = epoch_index if pretraining else epoch_index - pretrain_epochs
        try:
            loss, n_steps = _run_epoch(train, batch_size, seed_generator,
                                       (pretrain_step or step) if pretraining else step)
        except NonFiniteError as exc:
            if pretraining:
                raise
            run["diverged"] = {"epoch": epoch, "reason": str(exc)}
            run["history"].append({"phase": "train", "epoch": epoch, "diverged": str(exc)})
            run["epoch_done"] = epoch_index
            if checkpoint:
                checkpoint.save({**capture(stateful, seed_generator), "run": run, "best_state": best_state})
            if on_epoch:
                on_epoch(run["history"][-1])
            break
        row = {"phase": "pretrain" if pretraining else "train", "epoch": epoch, "train_loss": loss,
               "dev_acc": accuracy(model, dev)}
        if not pretraining:
            run["steps"] += n_steps
            if epoch > min_epochs and row["dev_acc"] > run["best_dev"]:
                run.update(best_dev=row["dev_acc"], best_epoch=epoch, steps_at_best=run["steps"])
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        run["history"].append(row)
        run["epoch_done"] = epoch_index
        if checkpoint:
            checkpoint.save({**capture(stateful, seed_generator), "run": run, "best_state": best_state})
        if on_epoch:
            on_epoch(row)

    test_acc = float("nan")
    if best_state is not None:
        final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        test_acc = accuracy(model, test)
        model.load_state_dict(final_state)
        selected = [r for r in run["history"] if r["phase"] == "train" and r["epoch"] == run["best_epoch"]]
        selected[0]["test_acc"] = test_acc
    return FitResult(run["best_dev"], test_acc, run["best_epoch"], run["steps_at_best"], run["history"],
                     run.get("diverged"))


def _run_epoch(train: ArrayData, batch_size: int, generator: torch.Generator, fn: StepFn) -> tuple[float, int]:
    losses = []
    for batch in train.batches(batch_size, generator):
        loss = fn(batch)
        check_finite(loss, "training loss")
        losses.append(loss)
    return sum(losses) / max(len(losses), 1), len(losses)


def fit_fixed_steps(model: nn.Module, train: ArrayData, test: ArrayData, *, batch_size: int, total_steps: int,
                    step: StepFn, seed_generator: torch.Generator,
                    on_epoch: Callable[[dict], None] | None = None, stateful: dict[str, Any] | None = None,
                    checkpoint: RunCheckpoint | None = None) -> FitResult:
    """Train for exactly `total_steps` steps (the last epoch cut short if needed); final test accuracy."""
    stateful = {"model": model, **(stateful or {})}
    run = {"steps": 0, "epoch": 0, "history": []}
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        restore(saved, stateful, seed_generator)
        run = saved["run"]
    while run["steps"] < total_steps:
        losses = []
        for batch in train.batches(batch_size, seed_generator):
            if run["steps"] >= total_steps:
                break
            loss = step(batch)
            check_finite(loss, "training loss")
            losses.append(loss)
            run["steps"] += 1
        run["epoch"] += 1
        row = {"phase": "train", "epoch": run["epoch"], "train_loss": sum(losses) / max(len(losses), 1)}
        run["history"].append(row)
        if checkpoint:
            checkpoint.save({**capture(stateful, seed_generator), "run": run})
        if on_epoch:
            on_epoch(row)
    test_acc = accuracy(model, test)
    return FitResult(float("nan"), test_acc, run["epoch"], run["steps"], run["history"])
