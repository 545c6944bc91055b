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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.data_weights import PersistentWeights, l2rw_weights, normalize, normalize_vjp, proportion_weights
from common.errors import ConfigError
from common.lookahead import lookahead_meta_gradient
from common.token_batches import is_token_batch, logits_by_length
from common.training import ArrayData, Batch, check_finite

WEIGHTING_METHODS = ("base", "proportion", "ren", "ours_weight", "ours_weight_eq12")
PERSISTENT_WEIGHT_METHODS = ("ours_weight", "ours_weight_eq12")   # keep phi; need a `weighting` config


@dataclass
class WeightingConfig:
    norm: str = "softmax"           # ours_weight normalisation: softmax | linear
    softmax_temp: float = 1.0
    w_init: float = 1.0
    w_decay: float = 2.0


def weighted_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, weights: torch.Tensor) -> float:
    """One optimizer step on sum_i weights_i * CE_i in train mode; returns the unweighted mean loss.
    Token-id batches run in length groups (`common.token_batches`: same losses, less padding)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = logits_by_length(model, batch.x) if is_token_batch(batch.x) else model(batch.x)
    losses = F.cross_entropy(logits, batch.y, reduction="none")
    (losses * weights.detach().to(losses.device)).sum().backward()
    optimizer.step()
    return float(losses.detach().mean())


class WeightingMethod:
    """Callable training step for one method; keeps per-example state for `ours_weight`."""

    def __init__(self, method: str, model: nn.Module, optimizer: torch.optim.Optimizer, train: ArrayData,
                 dev: ArrayData, num_classes: int, cfg: WeightingConfig):
        if method not in WEIGHTING_METHODS:
            raise ConfigError(f"method: unknown weighting method {method!r}; expected one of {list(WEIGHTING_METHODS)}")
        self.method, self.model, self.optimizer, self.dev, self.cfg = method, model, optimizer, dev, cfg
        self.class_counts = torch.bincount(train.y.cpu(), minlength=num_classes).clamp(min=1)
        self.phi = (PersistentWeights(len(train), cfg.w_init, cfg.w_decay) if method in PERSISTENT_WEIGHT_METHODS
                    else None)
        self.last_weights: torch.Tensor | None = None

    def batch_weights(self, batch: Batch) -> torch.Tensor:
        n = len(batch.y)
        if self.method == "base":
            return torch.full((n,), 1.0 / n)
        if self.method == "proportion":
            return proportion_weights(batch.y.cpu(), self.class_counts)
        if self.method == "ren":
            grad = lookahead_meta_gradient(self.model, self.optimizer, batch.x, batch.y, self.dev.x, self.dev.y,
                                           torch.zeros(n))
            check_finite(grad, "ren meta-gradient")
            return l2rw_weights(grad)
        phi = self.phi[batch.ids]
        norm, temp = self.cfg.norm, self.cfg.softmax_temp
        if self.method == "ours_weight_eq12":
            grad_w = lookahead_meta_gradient(self.model, self.optimizer, batch.x, batch.y, self.dev.x, self.dev.y,
                                             normalize(phi, norm, temp))
            grad = normalize_vjp(phi, grad_w, norm, temp)
        else:
            grad = lookahead_meta_gradient(self.model, self.optimizer, batch.x, batch.y, self.dev.x, self.dev.y, phi)
        check_finite(grad, f"{self.method} meta-gradient")
        return normalize(self.phi.update(batch.ids, grad), norm, temp)

    def extra_metrics(self) -> dict:
        """`phi_max` for ours_weight: the largest persistent weight (it grows without bound before a
        run diverges, see the hu19 report)."""
        return {"phi_max": float(self.phi.values.max())} if self.phi is not None else {}

    def state_dict(self) -> dict:
        return {"phi": self.phi.state_dict()} if self.phi is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.phi is not None:
            self.phi.load_state_dict(state["phi"])

    def __call__(self, batch: Batch) -> float:
        weights = self.batch_weights(batch)
        self.last_weights = weights
        return weighted_step(self.model, self.optimizer, batch, weights)
