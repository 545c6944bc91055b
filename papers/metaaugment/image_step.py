"""One training step of every MetaAugment method (Zhou et al., AAAI 2021), its augmentation and schedule.

Methods:

* `baseline`     CIFAR: flip (p = 0.5) + 4-pixel zero pad + random crop (the paper's "standard data
                 augmentation"; `baseline_cutout` adds Cutout 16); Omniglot: no augmentation (the paper).
* `randaugment`  the paper's own RA: an op pair drawn uniformly from the 14 x 14 pairs, magnitudes
                 uniform in [0, 10] with a random sign, the MetaAugment pipeline, equal weights (mean loss).
* `metaaugment`  Algorithm 1: op pairs from the transformation sampler (Eq. 5), the bilevel update
                 (Eq. 2-4, `papers.metaaugment.metaaugment`), policy with the transformation
                 embedding (w.TE) on the task network's features (share FE).
* `transforms_per_sample` m > 1 (Table 2's MetaAugment+MT): each image of the batch is augmented m
                 times, each copy with its own op pair, magnitudes, flip/crop and Cutout; all m n samples
                 enter Eq. 2-4 as one mini-batch (weights normalised over the m n outputs, the sampler
                 records all of them); the validation batch is unchanged.
* `metaaugment_ote`, `metaaugment_ownfe`  Table 5's ablations: no embedding (o.TE); the policy's own
                 feature extractor (own FE: a second network of the task architecture, its
                 parameters part of theta).

Pipelines: CIFAR flip/crop -> op j -> op k -> Cutout 16 (the paper: "the transformation is applied
after horizontal flipping, and then Cutout"; `common.augment.image_ops.augment`); Omniglot op j ->
op k on the raw characters (no flip/crop, no Cutout). Omniglot images are ink = 255 on black; the
geometric ops' fill (128 in `image_ops`, the CIFAR grey) is replaced by the background 0 there, so
a rotated or translated character is not framed by grey pixels that no real sample has.

The task network's lr follows a cosine schedule per step (the paper's schedules are in its
appendix, which we do not have; cosine to 0 is the schedule of the WRN baselines it compares with).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.augment.image_ops import (
    FILL,
    NUM_OPS,
    OPS,
    apply_op,
    augment,
    cutout,
    flip_crop,
    op_index,
    transformation_embedding,
)
from common.train.batches import ArrayData, Batch
from papers.metaaugment.metaaugment import MetaAugmentUpdate, MetaLearner, TaskNetwork, policy_optimizer
from papers.metaaugment.policy import PolicyNetwork, TransformationSampler

VARIANTS = {"metaaugment": (True, "share"), "metaaugment_ote": (False, "share"), "metaaugment_ownfe": (True, "own")}
METHODS = ("baseline", "randaugment", *VARIANTS)
KINDS = ("cifar", "omniglot")
_GEOMETRIC = torch.tensor([op_index(o) for o in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")])
_IDENTITY = op_index("Identity")


def channel_moments(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 images [N, H, W(, C)] in pixel units, exactly,
    from a 256-bin histogram per channel."""
    stack = images[..., None] if images.ndim == 3 else images
    levels = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(stack.shape[-1]):
        hist = np.bincount(stack[..., c].ravel(), minlength=256).astype(np.float64)
        mean = float(hist @ levels / hist.sum())
        means.append(mean)
        stds.append(float(np.sqrt(hist @ (levels - mean) ** 2 / hist.sum())))
    return means, stds


class CosineSchedule:
    """lr at step t of T: lr * (1 + cos(pi * t / T)) / 2."""

    def __init__(self, lr: float, total_steps: int):
        self.lr, self.total = lr, max(int(total_steps), 1)

    def lr_at(self, step: int) -> float:
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))


def background_ops(images: Tensor, j: Tensor, k: Tensor, m1: Tensor, m2: Tensor, background: int = 0) -> Tensor:
    """op j then op k (`apply_op`), with the pixels a geometric op brings in from outside the image set
    to `background` instead of FILL: the same geometric op on an all-zero image marks them (FILL there)."""
    x = images
    for ops, m in ((j, m1), (k, m2)):
        x = apply_op(x, ops, m)
        geometric = torch.isin(ops, _GEOMETRIC)
        if bool(geometric.any()):
            probe = apply_op(torch.zeros_like(images[:, :1]), torch.where(geometric, ops, _IDENTITY), m)
            x = x.masked_fill(probe == FILL, background)
    return x


class MethodStep:
    """The training step of one method: augmentation, loss, updates; returns the batch's training loss.
    State (steps, generator, sampler, policy, alpha, policy optimiser) goes into the run checkpoint."""

    def __init__(self, method: str, model: TaskNetwork, optimizer: torch.optim.Optimizer, schedule: CosineSchedule,
                 *, kind: str, dev: ArrayData | None = None, seed: int = 0, eps: float = 0.1,
                 sampler_r: int = 1, sampler_s: int = 1, policy_lr: float = 1e-3, policy_momentum: float = 0.9,
                 policy_nesterov: bool = True, policy_weight_decay: float = 5e-4, alpha_init: float = 0.1,
                 val_batch_size: int = 128, meta_gradient: str = "jvp", baseline_cutout: bool = False,
                 cutout_size: int = 16, extractor: TaskNetwork | None = None, transforms_per_sample: int = 1):
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
        self.method, self.model, self.optimizer, self.schedule, self.kind = method, model, optimizer, schedule, kind
        self.baseline_cutout, self.cutout_size = baseline_cutout, cutout_size
        if not isinstance(transforms_per_sample, int) or transforms_per_sample < 1 or \
                (transforms_per_sample > 1 and method not in VARIANTS):
            raise ValueError(f"transforms_per_sample: expected an int >= 1 (> 1 only for {list(VARIANTS)}), got "
                             f"{transforms_per_sample!r} for {method}")
        self.transforms_per_sample = transforms_per_sample
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = 0
        self.sampler = TransformationSampler(eps if method in VARIANTS else 1.0, sampler_r, sampler_s)
        self.learner, self.update = None, None
        self._stats = {"epoch": 0, "n": 0, "output_sum": 0.0, "val_loss_sum": 0.0, "batches": 0}
        self.alpha_trace: list[float] = []
        if method in VARIANTS:
            if dev is None or len(dev) == 0:
                raise ValueError(f"{method} needs a non-empty validation set (Eq. 3)")
            use_embedding, features = VARIANTS[method]
            if (features == "own") != (extractor is not None):
                raise ValueError(f"{method}: {'an' if features == 'own' else 'no'} own feature extractor expected")
            self.dev, self.val_batch_size = dev, int(val_batch_size)
            self.use_embedding = use_embedding
            self.learner = MetaLearner(PolicyNetwork(model.feature_dim, use_embedding), alpha_init, extractor)
            self.learner.to(next(model.parameters()).device)
            self.policy_optimizer = policy_optimizer(self.learner, policy_lr, policy_momentum, policy_nesterov,
                                                     policy_weight_decay)
            self.update = MetaAugmentUpdate(model, self.learner, optimizer, self.policy_optimizer, meta_gradient)

    # --------------------------------------------------------------------------------- augmentation
    def augmented(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """(augmented uint8 batch, (j, k, m1, m2) or None for the baseline)."""
        if self.method == "baseline":
            if self.kind == "omniglot":
                return images, None
            x = flip_crop(images, self.generator)
            return (cutout(x, self.cutout_size, self.generator) if self.baseline_cutout else x), None
        j, k, m1, m2 = self.sampler.sample(len(images), self.generator)
        if self.kind == "cifar":
            x = augment(images, j, k, m1, m2, self.generator, baseline=True, cutout_size=self.cutout_size)
        else:
            x = background_ops(images, j, k, m1, m2)
        return x, (j, k, m1, m2)

    def _val_batch(self, device) -> tuple[Tensor, Tensor]:
        idx = torch.randperm(len(self.dev), generator=self.generator)[: self.val_batch_size].to(device)
        return self.dev.x[idx], self.dev.y[idx]

    # -------------------------------------------------------------------------------------- the step
    def __call__(self, batch: Batch) -> float:
        lr = self.schedule.lr_at(self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        raw, y = batch.x, batch.y
        if self.transforms_per_sample > 1:                        # Table 2's MT: every image m times, each
            raw = raw.repeat(self.transforms_per_sample, *([1] * (raw.ndim - 1)))   # with its own transformation
            y = y.repeat(self.transforms_per_sample)
        images, transform = self.augmented(raw.cpu())
        x = images.to(batch.x.device).float()
        if self.update is None:                                   # baseline, randaugment: equal weights
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            return float(loss.detach())
        j, k, m1, m2 = transform
        embedding = transformation_embedding(j, k, m1, m2).to(x.device) if self.use_embedding else None
        x_val, y_val = self._val_batch(x.device)
        stats = self.update(x, y, embedding, x_val, y_val)         # Eq. 2-4
        self.sampler.record(j, k, stats.outputs)                 # Eq. 5 every s iterations
        self._record(stats)
        self.steps += 1
        return stats.train_loss

    def _record(self, stats) -> None:
        epoch = self.steps // max(self.sampler.s, 1)
        s = self._stats
        if s["epoch"] != epoch:
            self.alpha_trace.append(stats.alpha)
            s.update(epoch=epoch, n=0, output_sum=0.0, val_loss_sum=0.0, batches=0)
        s["n"] += int(stats.outputs.numel())
        s["output_sum"] += float(stats.outputs.sum())
        s["val_loss_sum"] += stats.val_loss
        s["batches"] += 1
        s["alpha"] = stats.alpha

    # ----------------------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict:
        state = {"steps": self.steps, "generator": self.generator.get_state(), "stats": dict(self._stats),
                 "alpha_trace": list(self.alpha_trace), "sampler": self.sampler.state_dict()}
        if self.learner is not None:
            state["learner"] = self.learner.state_dict()
            state["policy_optimizer"] = self.policy_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        self._stats, self.alpha_trace = dict(state["stats"]), list(state["alpha_trace"])
        self.sampler.load_state_dict(state["sampler"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
            self.policy_optimizer.load_state_dict(state["policy_optimizer"])

    def extra_metrics(self) -> dict:
        """Final lr; for MetaAugment the learned alpha (and its value at each sampler period), the mean
        policy output and validation loss of the last period, and the sampler's 14 x 14 distribution
        p_{j,k} (rows: first op, columns: second op, in `image_ops.OPS` order; Figure 2)."""
        out = {"lr_final": self.schedule.lr_at(max(self.steps - 1, 0)), "optimizer_steps": self.steps}
        if self.learner is None:
            return out
        s = self._stats
        out.update(alpha_final=float(self.learner.alpha.detach()), alpha_trace=list(self.alpha_trace),
                   ops=list(OPS), sampler_probs=[[round(float(p), 6) for p in row] for row in
                                                 self.sampler.probabilities.tolist()])
        if s["n"]:
            out["policy_output_mean_last_period"] = s["output_sum"] / s["n"]
            out["val_loss_mean_last_period"] = s["val_loss_sum"] / max(s["batches"], 1)
        assert len(out["sampler_probs"]) == NUM_OPS
        return out

