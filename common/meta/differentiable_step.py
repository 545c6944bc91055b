"""A differentiable one-step lookahead: theta'(phi) = theta + Delta(grad_theta L_train(theta, phi)).

The outer loss at theta' then depends on phi through the gradient, so its backward is second order
(hu19 Eq. 10 with Eq. 8; MetaAugment Eq. 2-3, where phi are the policy network's parameters and the
learning rate may itself be a tensor to learn). Delta is exactly the step the optimizer would take
from its current state: SGD with momentum and L2 decay, or Adam/AdamW with their moments and bias
correction (`common.meta.lookahead.adam_deltas`, kept differentiable).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from common.meta.lookahead import (
    AdamHyper,
    ParamDict,
    SGDHyper,
    adam_deltas,
    adam_optimizer_state,
    optimizer_hyper,
    sgd_optimizer_state,
)


def lookahead_step(model: nn.Module, optimizer: torch.optim.Optimizer, params: ParamDict, grads: ParamDict,
                   lr: Tensor | float | None = None) -> ParamDict:
    """theta' = theta + Delta(grads) for the parameters in `grads`, from `optimizer`'s current state.
    `grads` may carry a graph (create_graph=True): theta' is then differentiable w.r.t. whatever they
    depend on. `lr` overrides the optimizer's learning rate (a tensor keeps it differentiable, e.g.
    MetaAugment's learned inner step size)."""
    hp = optimizer_hyper(optimizer, model)
    if isinstance(hp, SGDHyper):
        momentum = sgd_optimizer_state(optimizer, model)
        step = hp.lr if lr is None else lr
        return {n: params[n] - step * (hp.momentum * momentum[n] + hp.decay(n) * params[n] + g)
                for n, g in grads.items()}
    exp_avg, exp_avg_sq, t = adam_optimizer_state(optimizer, model)
    if lr is None:
        deltas = adam_deltas(params, grads, exp_avg, exp_avg_sq, t, hp)
        return {n: params[n] + deltas[n] for n in grads}
    unit = AdamHyper(1.0, hp.betas, hp.eps, hp.weight_decay, hp.decoupled, hp.bias_correction)
    deltas = adam_deltas(params, grads, exp_avg, exp_avg_sq, t, unit)   # linear in lr (decoupled decay too)
    return {n: params[n] + lr * deltas[n] for n in grads}


def adam_hyper(optimizer: torch.optim.Optimizer, model: nn.Module) -> AdamHyper:
    """AdamHyper of a torch Adam/AdamW whose parameter groups differ only in weight decay."""
    hp = optimizer_hyper(optimizer, model)
    if not isinstance(hp, AdamHyper):
        raise ValueError(f"expected Adam or AdamW, got {type(optimizer).__name__}")
    return hp
