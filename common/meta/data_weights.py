"""Per-example data weights: normalisations, Ren et al. (L2RW) and hu19 persistent weights."""
from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_FLOOR = 1e-5


def linear_normalize(w: Tensor) -> Tensor:
    """Clamp at 0 and divide by the sum; an all-zero batch stays all zeros (L2RW)."""
    w = w.clamp(min=0)
    total = w.sum()
    return w / total if total > 1e-8 else torch.zeros_like(w)


def softmax_normalize(w: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(w / T) within the batch: hu19 Eq. 12's minibatch approximation."""
    return torch.softmax(w / temperature, dim=0)


def normalize(w: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    if kind == "linear":
        return linear_normalize(w)
    if kind == "softmax":
        return softmax_normalize(w, temperature)
    raise ValueError(f"weight normalisation: unknown kind {kind!r}; expected 'linear' or 'softmax'")


def normalize_vjp(phi: Tensor, grad_w: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    """dL/dphi from dL/dw for w = normalize(phi) (the chain rule through Eq. 12's normalisation):
    linear (phi > 0): (g - <w, g>) / sum(phi); softmax(phi / T): w * (g - <w, g>) / T."""
    w = normalize(phi, kind, temperature)
    centred = grad_w - (w * grad_w).sum()
    if kind == "linear":
        return centred / phi.clamp(min=0).sum()
    return w * centred / temperature


def l2rw_weights(meta_grad: Tensor) -> Tensor:
    """Ren et al. 2018: w = max(-dL_dev/deps, 0), normalised to sum 1, re-estimated every step."""
    return linear_normalize(-meta_grad)


def proportion_weights(labels: Tensor, class_counts: Tensor) -> Tensor:
    """Inverse class-frequency weights for the batch, normalised to sum 1."""
    return linear_normalize(1.0 / class_counts[labels].to(torch.float32))


class PersistentWeights:
    """hu19 weights phi_i kept per training example across steps and epochs (Eq. 11).

    Update after each meta-gradient (official rule): phi_i <- phi_i / decay - dL_dev/dphi_i,
    then clamp at 1e-5.
    """

    def __init__(self, n_examples: int, init: float, decay: float):
        if decay <= 0:
            raise ValueError(f"w_decay must be > 0, got {decay}")
        self.values = torch.full((n_examples,), float(init))
        self.decay = float(decay)

    def __getitem__(self, ids: Tensor) -> Tensor:
        return self.values[ids].clone()

    def update(self, ids: Tensor, meta_grad: Tensor) -> Tensor:
        ids = ids.cpu()
        grad = meta_grad.detach().to(device=self.values.device, dtype=self.values.dtype)
        new = (self.values[ids] / self.decay - grad).clamp(min=WEIGHT_FLOOR)
        self.values[ids] = new
        return new.clone()

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.values = state["values"].clone()
        self.decay = float(state["decay"])
