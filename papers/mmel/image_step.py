"""One training step of every image method of Yi et al. (ICLR 2021) Sec. 4.1, and its schedule.

Methods (Table 1):

* `da`       Baseline(DA): one random crop + flip view per example, plain cross-entropy.
* `da_long`  Baseline(DA+Long): the same step, `long_factor` (10) times the epochs (the schedule is
             scaled by the caller: decays at 600/1200/1600 of 2000 epochs in the paper profile).
* `da_uni`   Baseline(DA+UNI): the same |B| views as MMEL, uniform weights 1/|B| (Eq. 1; Remark 1).
* `mmel_h`   MMEL-H: Eq. 7 with P* of Eq. 6 (`papers.mmel.mmel.mmel_h_loss`).
* `mmel_s`   MMEL-S: Eq. 8 with P* of Eq. 9 (`papers.mmel.mmel.mmel_s_loss`).

Views (Sec. 4.1: random crop with 4-pixel zero padding + horizontal flip, labels unchanged) are
drawn for the batch in one batched call (`common.augment.image_views`) at every step from the run's
own view generator, so every epoch sees fresh views: Algorithm 1 draws B(x_i) once before training
(lines 1-3), which is what the text side does; for images the paper does not say, and redrawing is
what the standard crop/flip pipeline does every epoch. For the multi-view methods view 0 is x_i
itself (Sec. 3.1 assumes x_i in B(x_i); Eq. 8 needs it) and views 1..|B|-1 are random; `da` draws
one random view. All N*|B| views of a batch go through the network in one forward, so BatchNorm
statistics mix the views of the batch (Sec. 3.3: "computed in parallel").

The learning rate is a step function of the epoch (decay by `lr_decay` at each milestone epoch),
computed from the step counter, so the schedule is part of the step's checkpointed state.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.augment.image_views import crop_flip_views
from common.train.batches import Batch
from papers.mmel.mmel import da_uni_loss, mmel_h_loss, mmel_s_loss, view_logits

SINGLE_VIEW_METHODS = ("da", "da_long")
MULTI_VIEW_METHODS = ("da_uni", "mmel_h", "mmel_s")
IMAGE_METHODS = SINGLE_VIEW_METHODS + MULTI_VIEW_METHODS
COMPILE_MODES = ("eager", "inductor", "aot_eager")   # eager: no torch.compile; else its backend


def channel_moments(images_nhwc: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and (population) std of uint8 images [N, H, W, C], in pixel units,
    from a 256-bin histogram per channel (no float copy of the data set)."""
    levels = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(images_nhwc.shape[-1]):
        counts = np.bincount(images_nhwc[..., c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * levels).sum() / total)
        means.append(mean)
        stds.append(float(math.sqrt((counts * (levels - mean) ** 2).sum() / total)))
    return means, stds


class PixelNormalized(nn.Module):
    """`net` on raw pixel values (float 0..255, [N, C, H, W]): per-channel (x - mean) / std first,
    then the network in channels_last memory format (measured faster on CPU for these batches)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(x)


class StepSchedule:
    """lr at step t: lr * lr_decay ** (number of milestones <= epoch), epoch = t // steps_per_epoch
    (0-based, i.e. epochs completed): decay "at epoch 60" means from the 61st epoch on."""

    def __init__(self, lr: float, lr_decay: float, milestones: list[int], steps_per_epoch: int):
        self.lr, self.lr_decay, self.milestones = lr, lr_decay, sorted(milestones)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)

    def lr_at(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return self.lr * self.lr_decay ** sum(m <= epoch for m in self.milestones)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """`model` itself (eager) or torch.compile(model, backend=mode); parameters are shared."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile: expected one of {list(COMPILE_MODES)}, got {mode!r}")
    return model if mode == "eager" else torch.compile(model, backend=mode, dynamic=False)


class ImageMethodStep:
    """The training step of one image method: views, loss, SGD step; returns the batch loss
    (the value of the method's objective, KL term included for MMEL). State (step count, view
    generator, P* statistics of the current epoch) goes into the run checkpoint."""

    def __init__(self, method: str, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: StepSchedule, *,
                 num_views: int = 1, lambda_p: float | None = None, lambda_t: float | None = None,
                 view_seed: int = 0, compile_mode: str = "eager"):
        if method not in IMAGE_METHODS:
            raise ValueError(f"method: expected one of {list(IMAGE_METHODS)}, got {method!r}")
        if method in MULTI_VIEW_METHODS and num_views < 2:
            raise ValueError(f"{method} needs |B| = num_views >= 2, got {num_views}")
        self.method, self.model, self.optimizer, self.schedule = method, model, optimizer, schedule
        self.num_views = 1 if method in SINGLE_VIEW_METHODS else int(num_views)
        self.lambda_p, self.lambda_t = lambda_p, lambda_t
        self.forward = compiled(model, compile_mode)
        self.generator = torch.Generator().manual_seed(int(view_seed))
        self.steps = 0
        self._epoch_stats = {"epoch": 0, "n": 0, "kl": 0.0, "max_weight": 0.0}

    def views(self, images: Tensor) -> Tensor:
        """[n, k, C, H, W] raw-pixel float views of a uint8 batch [n, C, H, W] (k = 1 for DA)."""
        return crop_flip_views(images, self.num_views, self.generator,
                               include_original=self.method in MULTI_VIEW_METHODS).float()

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.method in SINGLE_VIEW_METHODS:
            return F.cross_entropy(logits[:, 0], labels)
        if self.method == "da_uni":
            out = da_uni_loss(logits, labels)
        elif self.method == "mmel_h":
            out = mmel_h_loss(logits, labels, self.lambda_p)
        else:
            out = mmel_s_loss(logits, labels, self.lambda_p, self.lambda_t)
        self._record(out.weights, out.kl)
        return out.loss

    def _record(self, weights: Tensor, kl: Tensor) -> None:
        epoch = self.steps // self.schedule.steps_per_epoch
        stats = self._epoch_stats
        if stats["epoch"] != epoch:
            stats.update(epoch=epoch, n=0, kl=0.0, max_weight=0.0)
        stats["n"] += int(weights.shape[0])
        stats["kl"] += float(kl.sum())
        stats["max_weight"] += float(weights.max(dim=1).values.sum())

    def __call__(self, batch: Batch) -> float:
        lr = self.schedule.lr_at(self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        logits = view_logits(self.forward, self.views(batch.x))
        loss = self.loss(logits, batch.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    # checkpointed state (common.train.checkpoint: tensors and plain containers only)
    def state_dict(self) -> dict:
        return {"steps": self.steps, "generator": self.generator.get_state(), "epoch_stats": dict(self._epoch_stats)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        self._epoch_stats = dict(state["epoch_stats"])

    def extra_metrics(self) -> dict:
        """Final lr and, for the weighted methods, P* of the last epoch: mean KL(P* || uniform) and
        mean largest weight per example (uniform: 0 and 1/|B|; MMEL-S: over the |B|-1 augmented views)."""
        out = {"num_views": self.num_views, "lr_final": self.schedule.lr_at(max(self.steps - 1, 0)),
               "optimizer_steps": self.steps}
        stats = self._epoch_stats
        if stats["n"]:
            out["pstar_kl_last_epoch"] = stats["kl"] / stats["n"]
            out["pstar_max_weight_last_epoch"] = stats["max_weight"] / stats["n"]
        return out
