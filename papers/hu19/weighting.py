"""hu19 data weighting (Sec. 4.2, Eq. 11-12) and its baselines as per-batch training steps.

Every method ends in the same real step: a gradient step on sum_i w_hat_i * loss_i with batch
weights w_hat summing to 1 (Eq. 12, minibatch form). They differ only in how w_hat is chosen:

* `base`        uniform weights (plain mean loss).
* `proportion`  inverse class frequency (a fixed re-weighting).
* `ren`         Ren et al. 2018 (L2RW): w_hat = normalise(max(-dL_dev/dw, 0)) at w = 0, re-estimated
                from scratch each step.
* `ours_weight` hu19: persistent phi_i (Eq. 11). Lookahead theta'(phi) = theta + sum_i phi_i Delta_i
                (Eq. 7), meta-gradient of the dev loss (Eq. 8), phi_i <- phi_i / decay - grad_i
                (clamp 1e-5), then softmax(phi/T) (Eq. 12) or linear normalisation (the log-phi
                parameterisation the paper mentions after Eq. 12).
* `ours_weight_eq12`  our variant: as `ours_weight`, but the lookahead steps with the normalised
                weights, theta'(phi) = theta + sum_i w_hat_i(phi) Delta_i (Eq. 12's objective), and the
                meta-gradient reaches phi through the normalisation (chain rule). The official code
                (= `ours_weight`) steps with raw phi, whose lookahead grows with phi.

Pass by pass as the official code (`MetaStepConfig`, from the run config): each pass of the meta
step in its train/eval mode (`common.meta.lookahead.PassModes`); text weights per sub-batch of
`chunk` examples (the official `for i in range(0, batch_size, 8)`), each with its own lookahead
from the same theta, normalised over the whole batch; and, with Adam, uniform weights (phi kept)
while the optimizer has no state yet (the official `_get_weights` returns ones until then).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.errors import ConfigError
from common.meta.data_weights import (
    PersistentWeights,
    l2rw_weights,
    normalize,
    normalize_vjp,
    proportion_weights,
)
from common.meta.lookahead import PassModes, lookahead_meta_gradient
from common.train.batches import ArrayData, Batch
from common.train.loop import check_finite
from common.train.steps import weighted_step

WEIGHTING_METHODS = ("base", "proportion", "ren", "ours_weight", "ours_weight_eq12")
PERSISTENT_WEIGHT_METHODS = ("ours_weight", "ours_weight_eq12")   # keep phi; need a `weighting` config


@dataclass
class WeightingConfig:
    norm: str = "softmax"           # ours_weight normalisation: softmax | linear
    softmax_temp: float = 1.0
    w_init: float = 1.0
    w_decay: float = 2.0


@dataclass(frozen=True)
class MetaStepConfig:
    """How the meta step runs: a run config's `meta_step` block {per_example, dev, dev_batch_size,
    chunk, uniform_before_adam_state}; absent = the eval-mode, whole-batch reading that the results
    made before the block existed used."""
    modes: PassModes = PassModes()
    chunk: int | None = None        # lookahead per sub-batch of this many examples (None: whole batch)
    uniform_before_adam_state: bool = False   # uniform weights, phi kept, until Adam has moments
    seed: int = 0                   # of the dev-batch shuffle

    @classmethod
    def from_run_config(cls, config: dict) -> MetaStepConfig:
        block = dict(config.get("meta_step") or {})
        chunk = block.pop("chunk", None)
        uniform = bool(block.pop("uniform_before_adam_state", False))
        return cls(PassModes(**block), chunk, uniform, config["seed"])




class WeightingMethod:
    """Callable training step for one method; keeps per-example state for `ours_weight`."""

    def __init__(self, method: str, model: nn.Module, optimizer: torch.optim.Optimizer, train: ArrayData,
                 dev: ArrayData, num_classes: int, cfg: WeightingConfig, meta: MetaStepConfig = MetaStepConfig()):
        if method not in WEIGHTING_METHODS:
            raise ConfigError(f"method: unknown weighting method {method!r}; expected one of {list(WEIGHTING_METHODS)}")
        self.method, self.model, self.optimizer, self.dev, self.cfg = method, model, optimizer, dev, cfg
        self.class_counts = torch.bincount(train.y.cpu(), minlength=num_classes).clamp(min=1)
        self.phi = (PersistentWeights(len(train), cfg.w_init, cfg.w_decay) if method in PERSISTENT_WEIGHT_METHODS
                    else None)
        self.meta = meta
        self.dev_generator = torch.Generator().manual_seed(meta.seed + 7)   # dev-batch order of the dev pass
        self.last_weights: torch.Tensor | None = None

    def meta_gradient(self, batch: Batch, w: torch.Tensor) -> torch.Tensor:
        """dL_dev/dw of the batch (Eq. 8); with `meta.chunk`, one lookahead per sub-batch."""
        size = self.meta.chunk or len(batch.y)
        parts = [lookahead_meta_gradient(self.model, self.optimizer, batch.x[i:i + size], batch.y[i:i + size],
                                         self.dev.x, self.dev.y, w[i:i + size], modes=self.meta.modes,
                                         dev_generator=self.dev_generator)
                 for i in range(0, len(batch.y), size)]
        return torch.cat(parts)

    def optimizer_has_state(self) -> bool:
        """False before an Adam/AdamW optimizer's first step (no moments yet). SGD: always True."""
        if not isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return True
        return any("exp_avg" in self.optimizer.state.get(p, {}) for g in self.optimizer.param_groups
                   for p in g["params"])

    def batch_weights(self, batch: Batch) -> torch.Tensor:
        n = len(batch.y)
        if self.method == "base":
            return torch.full((n,), 1.0 / n)
        if self.method == "proportion":
            return proportion_weights(batch.y.cpu(), self.class_counts)
        if self.meta.uniform_before_adam_state and not self.optimizer_has_state():
            return torch.full((n,), 1.0 / n)      # the official rule before Adam's first step (phi kept)
        if self.method == "ren":
            grad = self.meta_gradient(batch, torch.zeros(n))
            check_finite(grad, "ren meta-gradient")
            return l2rw_weights(grad)
        phi = self.phi[batch.ids]
        norm, temp = self.cfg.norm, self.cfg.softmax_temp
        if self.method == "ours_weight_eq12":
            grad_w = self.meta_gradient(batch, normalize(phi, norm, temp))
            grad = normalize_vjp(phi, grad_w, norm, temp)
        else:
            grad = self.meta_gradient(batch, phi)
        check_finite(grad, f"{self.method} meta-gradient")
        return normalize(self.phi.update(batch.ids, grad), norm, temp)

    def extra_metrics(self) -> dict:
        """`phi_max` for ours_weight: the largest persistent weight (it grows without bound before a
        run diverges, see the hu19 report)."""
        return {"phi_max": float(self.phi.values.max())} if self.phi is not None else {}

    def state_dict(self) -> dict:
        state = {"dev_generator": self.dev_generator.get_state()}
        if self.phi is not None:
            state["phi"] = self.phi.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.dev_generator.set_state(state["dev_generator"])
        if self.phi is not None:
            self.phi.load_state_dict(state["phi"])

    def __call__(self, batch: Batch) -> float:
        weights = self.batch_weights(batch)
        self.last_weights = weights
        return weighted_step(self.model, self.optimizer, batch, weights)
