"""Functional one-step lookahead: the meta-gradient of the dev loss w.r.t. per-example weights.

hu19 (Hu et al. 2019) Eq. 7-8 with the weighting reward of Eq. 11-12, and Ren et al. (2018):
each training example i would move the parameters by the optimizer step Delta_i it causes alone
(same optimizer state, same hyperparameters). The lookahead is

    theta'(w) = theta + sum_i w_i Delta_i                                   (Eq. 7, weighted)
    d L_dev(theta'(w)) / d w_i = < grad L_dev(theta'), Delta_i >            (Eq. 8)

Delta_i does not depend on w, so this is the exact derivative. Batched instead of a loop:

* SGD + momentum mu + L2 weight decay lambda (torch.optim.SGD): Delta_i = -lr (mu m + lambda theta
  + g_i), linear in the per-example gradient g_i, so sum_i w_i g_i is one backward of the weighted
  loss and the per-example inner products <G, g_i> are one forward-mode pass (jvp) in direction G.
* Adam/AdamW: Delta_i is elementwise non-linear in g_i, so per-example gradients come from
  torch.func.vmap(grad) and Delta_i uses the current moments and bias correction.

Train/eval mode per pass (`PassModes`): the per-example pass (the Delta_i) and the dev pass at
theta' each run in their own mode. The hu19 official code (its functional copy `MagicModule` is
always in training mode) runs images with eval-mode per-example steps and a train-mode dev pass
(BatchNorm statistics of each dev batch, dev batches of the train batch size, shuffled), and text
with both passes in train mode (dropout; independent masks per example under vmap). A train-mode
dev pass never changes the model's running statistics (the official copy deep-copies its buffers).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from common.train.batches import (
    is_token_batch,
    length_groups,
    logits_by_length,
    trim_padding,
)

ParamDict = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]     # (logits [B, ...], targets [B, ...]) -> per-example losses [B]


def cross_entropy_per_example(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy; targets are class ids [B] or class probabilities [B, C] (soft labels)."""
    return F.cross_entropy(logits, targets, reduction="none")

log = logging.getLogger("repro.lookahead")
MODES = ("train", "eval")


@dataclass(frozen=True)
class PassModes:
    """Train/eval mode of the per-example pass and of the dev pass at theta' (see the module
    docstring). `dev_batch_size`: the dev pass runs in shuffled batches of this size, each with its
    own BatchNorm batch statistics in train mode (None: the whole dev set at once); the dev loss is
    the mean over all dev examples either way."""
    per_example: str = "eval"
    dev: str = "eval"
    dev_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_example", "dev"):
            if getattr(self, name) not in MODES:
                raise ValueError(f"PassModes.{name}: {getattr(self, name)!r}; expected one of {list(MODES)}")
        if self.dev_batch_size is not None and (isinstance(self.dev_batch_size, bool) or self.dev_batch_size < 1):
            raise ValueError(f"PassModes.dev_batch_size: {self.dev_batch_size!r}; expected a positive int or None")


@contextlib.contextmanager
def in_mode(model: nn.Module, mode: str):
    """`model` in train or eval mode for the block, its previous mode restored after."""
    was_training = model.training
    model.train(mode == "train")
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class SGDHyper:
    lr: float
    momentum: float = 0.0
    weight_decay: float | Mapping[str, float] = 0.0   # one value, or per parameter name

    def decay(self, name: str) -> float:
        return _decay_of(self.weight_decay, name)


@dataclass(frozen=True)
class AdamHyper:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float | Mapping[str, float] = 0.0   # one value, or per parameter name
    decoupled: bool = False        # AdamW-style decay (theta <- theta - lr*lambda*theta)
    bias_correction: bool = True

    def decay(self, name: str) -> float:
        return _decay_of(self.weight_decay, name)


def _decay_of(weight_decay: float | Mapping[str, float], name: str) -> float:
    return float(weight_decay.get(name, 0.0)) if isinstance(weight_decay, Mapping) else float(weight_decay)


def trainable_params(model: nn.Module) -> ParamDict:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def model_buffers(model: nn.Module) -> ParamDict:
    return {name: b for name, b in model.named_buffers()}


def per_example_losses(model: nn.Module, params: ParamDict, buffers: ParamDict, x: Tensor, y: Tensor, *,
                       by_length: bool = False, loss_fn: LossFn = cross_entropy_per_example) -> Tensor:
    """Cross-entropy of each row at `params`. `by_length`: token-id rows run in length groups, each
    trimmed to its longest row (same values, less padding; not inside vmap)."""
    if by_length and is_token_batch(x):
        logits = logits_by_length(lambda ids: functional_call(model, (params, buffers), (ids,)), x)
    else:
        logits = functional_call(model, (params, buffers), (x,))
    return loss_fn(logits, y)


def dev_loss_grad(model, params: ParamDict, buffers: ParamDict, dev_x: Tensor, dev_y: Tensor,
                  batches: list[Tensor] | None = None, loss_fn: LossFn = cross_entropy_per_example,
                  ) -> tuple[Tensor, ParamDict]:
    """Mean dev cross-entropy at `params` and its gradient G. `batches`: index tensors of the dev
    batches to forward separately (each with its own BatchNorm statistics in train mode); the loss is
    sum_b sum_{i in b} CE_i / N either way. A train-mode pass works on a copy of the buffers, so the
    model's running statistics stay as they were."""
    names = list(params)
    leaves = [params[n].detach().requires_grad_(True) for n in names]
    if model.training:
        buffers = {n: b.clone() for n, b in buffers.items()}
    at = dict(zip(names, leaves))
    if batches is None:
        loss = per_example_losses(model, at, buffers, dev_x, dev_y, by_length=True, loss_fn=loss_fn).mean()
    else:
        loss = sum(per_example_losses(model, at, buffers, dev_x[b], dev_y[b], by_length=True, loss_fn=loss_fn).sum()
                   for b in batches) / len(dev_y)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), dict(zip(names, grads))


def dev_batches(n_dev: int, modes: PassModes, generator: torch.Generator | None) -> list[Tensor] | None:
    """Index batches of the dev pass: None (one pass) unless `modes.dev_batch_size` is set; then
    a permutation (by `generator`, else in order) cut into batches of that size."""
    if modes.dev_batch_size is None:
        return None
    order = torch.randperm(n_dev, generator=generator) if generator is not None else torch.arange(n_dev)
    return list(order.split(modes.dev_batch_size))


def _dot(a: ParamDict, b: ParamDict) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def sgd_optimizer_state(optimizer: torch.optim.SGD, model: nn.Module) -> ParamDict:
    """Momentum buffers by parameter name (zeros before the first step, as torch's SGD behaves)."""
    state = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        state[name] = torch.zeros_like(p) if buf is None else buf.detach()
    return state


def adam_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[ParamDict, ParamDict, int]:
    """(exp_avg, exp_avg_sq, steps taken) by parameter name, zeros before the first step."""
    m, v, step = {}, {}, 0
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        m[name] = st["exp_avg"].detach() if "exp_avg" in st else torch.zeros_like(p)
        v[name] = st["exp_avg_sq"].detach() if "exp_avg_sq" in st else torch.zeros_like(p)
        if "step" in st:
            step = int(st["step"])
    return m, v, step


def sgd_meta_gradient(model: nn.Module, params: ParamDict, buffers: ParamDict, x: Tensor, y: Tensor,
                      dev_x: Tensor, dev_y: Tensor, w: Tensor, momentum_buf: ParamDict,
                      hp: SGDHyper, modes: PassModes = PassModes(),
                      batches: list[Tensor] | None = None, loss_fn: LossFn = cross_entropy_per_example) -> Tensor:
    """d L_dev(theta + sum_i w_i Delta_i) / d w for SGD deltas (Eq. 8), shape [B]. The per-example
    pass is batched (one weighted backward, one jvp), so it must be in eval mode: in train mode
    the examples would share BatchNorm statistics and dropout draws."""
    if modes.per_example != "eval":
        raise ValueError("sgd_meta_gradient: the per-example pass is batched and needs eval mode "
                         "(PassModes.per_example='eval')")
    names = list(params)
    theta = [params[n] for n in names]
    momentum = [momentum_buf[n] for n in names]
    if bool((w != 0).any()):
        leaves = [t.detach().requires_grad_(True) for t in theta]
        with in_mode(model, "eval"):
            weighted = (w.detach() * per_example_losses(model, dict(zip(names, leaves)), buffers, x, y,
                                                        loss_fn=loss_fn)).sum()
        sum_g = torch.autograd.grad(weighted, leaves)
        total_w = float(w.detach().sum())
        # theta' = theta - lr * (S * (mu m + lambda theta) + sum_i w_i g_i), S = sum_i w_i (fused, in place)
        ahead = torch._foreach_mul(theta, [1.0 - hp.lr * total_w * hp.decay(n) for n in names])
        torch._foreach_add_(ahead, momentum, alpha=-hp.lr * total_w * hp.momentum)
        torch._foreach_add_(ahead, list(sum_g), alpha=-hp.lr)
        lookahead = dict(zip(names, ahead))
    else:
        lookahead = params
    with in_mode(model, modes.dev):
        _, g_dev = dev_loss_grad(model, lookahead, buffers, dev_x, dev_y, batches, loss_fn)
    # <G, mu m + lambda theta>: the part of every Delta_i that does not depend on the example.
    shared = sum(hp.momentum * torch.vdot(g_dev[n].flatten(), momentum_buf[n].flatten())
                 + hp.decay(n) * torch.vdot(g_dev[n].flatten(), params[n].flatten()) for n in names)
    # <G, g_i> for every i at once: the directional derivative of each example's loss along G.
    with in_mode(model, "eval"):
        _, dots = jvp(lambda p: per_example_losses(model, p, buffers, x, y, loss_fn=loss_fn), (params,), (g_dev,))
    return -hp.lr * (shared + dots.detach())


def vmap_randomness(model: nn.Module) -> str:
    """vmap's `randomness` for per-example passes: independent dropout draws per example in train
    mode (as a loop over examples would make), an error on any random op in eval mode."""
    return "different" if model.training else "error"


def per_example_grads(model: nn.Module, params: ParamDict, buffers: ParamDict, x: Tensor, y: Tensor,
                      loss_fn: LossFn = cross_entropy_per_example) -> ParamDict:
    """Per-example gradients {name: [B, *shape]} by vmap over a single-example loss, in the model's
    current mode (train mode: each example its own dropout masks)."""
    def one(p, xi, yi):
        return per_example_losses(model, p, buffers, xi.unsqueeze(0), yi.unsqueeze(0), loss_fn=loss_fn).squeeze(0)

    return vmap(grad(one), in_dims=(None, 0, 0), randomness=vmap_randomness(model))(params, x, y)


FUSE_MIN_NUMEL = 100_000      # per-example Adam deltas of tensors this large use the fused kernel


def _adam_delta_math(g: Tensor, p: Tensor, m: Tensor, v: Tensor, l2: Tensor, decoupled: Tensor, b1: Tensor,
                     b2: Tensor, lr_bc1: Tensor, bc2: Tensor, eps: Tensor) -> Tensor:
    """Elementwise Adam/AdamW step from state (m, v) for gradient(s) g; hyperparameters as 0-d
    tensors so that one compiled kernel serves every step (floats would be baked in)."""
    g = g + l2 * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    # clamp: sqrt'(0) is infinite, so a differentiable step (second-order meta step) would get
    # NaN (inf * 0) wherever v = 0; the value changes by < 1e-18, far below eps
    return -lr_bc1 * m / ((v / bc2).clamp_min(torch.finfo(v.dtype).tiny).sqrt() + eps) - decoupled * p


class FusedAdamDelta:
    """`_adam_delta_math` compiled into one pass over memory (torch.compile, CPU or GPU), compiled on
    first use. On CPU the eager version makes ~10 passes over B x n floats and dominates the
    per-example meta step of a BERT (8 x 22.7M floats: ~7 s eager vs ~0.8 s fused per 11.7M-float
    tensor, measured here). After a compile/run failure (e.g. no C++ compiler for inductor) it stays
    unavailable and callers use the eager math: same numbers, eager speed."""

    def __init__(self) -> None:
        self._kernel = None
        self.available = True

    def __call__(self, *args: Tensor) -> Tensor:
        if self._kernel is None:
            self._kernel = torch.compile(_adam_delta_math, dynamic=True)
        return self._kernel(*args)

    def disable(self, exc: Exception) -> None:
        self.available = False
        log.warning("fused Adam deltas unavailable (%s: %s); using the eager computation", type(exc).__name__, exc)


FUSED_ADAM_DELTA = FusedAdamDelta()


def adam_deltas(params: ParamDict, grads: ParamDict, exp_avg: ParamDict, exp_avg_sq: ParamDict, step: int,
                hp: AdamHyper, fused: bool | None = None) -> ParamDict:
    """Delta_i: the Adam/AdamW update each example alone would cause from the current state.
    `grads` holds per-example gradients [B, *shape] or one gradient [*shape]. `fused`: None = the
    compiled kernel for tensors of >= FUSE_MIN_NUMEL elements (REPRO_FUSED_ADAM=0 disables it),
    True = always, False = never; never while a gradient must flow through the step."""
    b1, b2 = hp.betas
    t = step + 1
    bc1 = 1 - b1 ** t if hp.bias_correction else 1.0
    bc2 = 1 - b2 ** t if hp.bias_correction else 1.0
    auto = fused is None and os.environ.get("REPRO_FUSED_ADAM", "1") != "0"
    deltas = {}
    for n, g in grads.items():
        p = params[n]
        decay = hp.decay(n)
        scalars = [torch.tensor(x, dtype=g.dtype, device=g.device) for x in
                   (0.0 if hp.decoupled else decay, hp.lr * decay if hp.decoupled else 0.0, b1, b2, hp.lr / bc1, bc2,
                    hp.eps)]
        differentiable = torch.is_grad_enabled() and (g.requires_grad or p.requires_grad)
        use_fused = not differentiable and (fused is True or (auto and g.numel() >= FUSE_MIN_NUMEL))
        if use_fused and FUSED_ADAM_DELTA.available:   # 2-D, so one compiled kernel serves every parameter
            try:
                flat = FUSED_ADAM_DELTA(g.reshape(-1, p.numel()), p.reshape(-1), exp_avg[n].reshape(-1),
                                        exp_avg_sq[n].reshape(-1), *scalars)
                deltas[n] = flat.reshape(g.shape)
                continue
            except Exception as exc:   # e.g. no C++ compiler for inductor: same numbers, eager speed
                FUSED_ADAM_DELTA.disable(exc)
        deltas[n] = _adam_delta_math(g, p, exp_avg[n], exp_avg_sq[n], *scalars)
    return deltas


def adam_meta_gradient(model: nn.Module, params: ParamDict, buffers: ParamDict, x: Tensor, y: Tensor,
                       dev_x: Tensor, dev_y: Tensor, w: Tensor, state: tuple[ParamDict, ParamDict, int],
                       hp: AdamHyper, token_embedding: str | None = None, modes: PassModes = PassModes(),
                       batches: list[Tensor] | None = None, loss_fn: LossFn = cross_entropy_per_example) -> Tensor:
    """d L_dev(theta + sum_i w_i Delta_i) / d w for Adam deltas (Eq. 8), shape [B]; the per-example
    pass (vmap, one example at a time) and the dev pass each in their mode of `modes`.

    `token_embedding`: name of a [V, H] word-embedding table that the model indexes with the integer
    input x (the model's forward must accept `inputs_embeds=`). Example i's gradient touches only the
    rows of its own tokens, and Adam's step for a zero gradient is the same for every example, so
    Delta_i = Delta_0 + C_i with Delta_0 the zero-gradient step and C_i non-zero only on the batch's
    token rows R: the table costs one dense pass plus [B, |R|, H] instead of [B, V, H] (exact)."""
    exp_avg, exp_avg_sq, step = state
    w = w.detach()
    table = token_embedding
    with in_mode(model, modes.per_example):
        if table is None:
            grads = per_example_grads(model, params, buffers, x, y, loss_fn)
        else:
            rest = {n: p for n, p in params.items() if n != table}
            rows, grads, row_grads, order = per_example_grads_token_rows(model, rest, params[table], table, buffers,
                                                                         x, y, loss_fn)
            w = w[order]      # the examples in the order of their gradients; undone on return
    deltas = adam_deltas(params, grads, exp_avg, exp_avg_sq, step, hp)
    lookahead = {n: params[n] + torch.tensordot(w, d, dims=1) for n, d in deltas.items()}
    if table is not None:
        E, m, v = params[table], exp_avg[table], exp_avg_sq[table]
        delta0 = adam_deltas({table: E}, {table: torch.zeros_like(E)}, {table: m}, {table: v}, step, hp)[table]
        corrections = adam_deltas({table: E[rows]}, {table: row_grads}, {table: m[rows]}, {table: v[rows]}, step,
                                  hp)[table] - delta0[rows]                                   # C_i on rows R
        lookahead[table] = (E + w.sum() * delta0).index_add_(0, rows, torch.tensordot(w, corrections, dims=1))
    with in_mode(model, modes.dev):
        _, g_dev = dev_loss_grad(model, lookahead, buffers, dev_x, dev_y, batches, loss_fn)
    dots = sum(d.reshape(len(w), -1) @ g_dev[n].reshape(-1) for n, d in deltas.items())   # <G, Delta_i>, one gemv each
    if table is not None:
        G = g_dev[table]
        dots = dots + torch.vdot(G.flatten(), delta0.flatten()) + corrections.reshape(len(w), -1) @ G[rows].reshape(-1)
        dots = torch.empty_like(dots).index_put_((order,), dots)
    return dots


def per_example_grads_token_rows(model: nn.Module, rest: ParamDict, table_weight: Tensor, table: str,
                                 buffers: ParamDict, x: Tensor, y: Tensor, loss_fn: LossFn = cross_entropy_per_example,
                                 ) -> tuple[Tensor, ParamDict, Tensor, Tensor]:
    """Per-example gradients with a word-embedding table kept sparse: (R = the batch's distinct token
    ids, {name: [B, *shape]} for the other parameters, [B, |R|, H] gradient of the table's rows R,
    `order`). Rows run in length groups, each trimmed to its longest row (`common.train.batches`),
    so the gradients come in the order `order` of the batch's rows (x[order]). The gradient w.r.t.
    the gathered embeddings E[x_i] is summed per token id (repeated tokens)."""
    rows, inverse = torch.unique(x, return_inverse=True)
    padding_idx = getattr(model.get_submodule(table.rpartition(".")[0]), "padding_idx", None)
    H = table_weight.shape[1]

    def one(p, e, xi, yi):
        logits = functional_call(model, ({**p, table: table_weight}, buffers), (xi.unsqueeze(0),),
                                 {"inputs_embeds": e.unsqueeze(0)})
        return loss_fn(logits, yi.unsqueeze(0)).squeeze(0)

    per_example = vmap(grad(one, argnums=(0, 1)), in_dims=(None, 0, 0, 0), randomness=vmap_randomness(model))
    groups = length_groups(x)
    row_grads = torch.zeros(len(x) * len(rows), H, dtype=table_weight.dtype, device=table_weight.device)
    parts, start = [], 0
    for group in groups:
        ids = trim_padding(x[group])
        g_group, g_embeds = per_example(rest, table_weight.detach()[ids], ids, y[group])
        if padding_idx is not None:   # nn.Embedding never updates its padding row
            g_embeds = g_embeds.masked_fill((ids == padding_idx).unsqueeze(-1), 0.0)
        slots = start + torch.arange(len(group), device=x.device)          # positions in `order`
        offsets = (inverse[group, :ids.shape[1]] + len(rows) * slots[:, None]).reshape(-1)
        row_grads.index_add_(0, offsets, g_embeds.reshape(-1, H))
        parts.append(g_group)
        start += len(group)
    g_rest = parts[0] if len(parts) == 1 else {n: torch.cat([part[n] for part in parts]) for n in parts[0]}
    return rows, g_rest, row_grads.reshape(len(x), len(rows), H), torch.cat(groups)


def reference_meta_gradient(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                            dev_x: Tensor, dev_y: Tensor, w: Tensor) -> Tensor:
    """Per-example loop as the official code: copy model+optimizer, step on example i alone,
    Delta_i = theta_new - theta; then autograd through theta + sum_i w_i Delta_i. For tests and
    benchmarks (slow, exact)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    name_of = {id(p): n for n, p in model.named_parameters()}
    params = trainable_params(model)
    buffers = {n: b.clone() for n, b in model_buffers(model).items()}
    deltas = []
    for i in range(len(x)):
        twin = copy.deepcopy(model)
        twin_params = dict(twin.named_parameters())
        twin_groups = [{"params": [twin_params[name_of[id(p)]] for p in g["params"]]} for g in optimizer.param_groups]
        twin_opt = type(optimizer)(twin_groups, lr=optimizer.defaults["lr"])
        # deepcopy: load_state_dict may alias the live optimizer's state tensors.
        twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        twin_opt.zero_grad()
        F.cross_entropy(twin(x[i:i + 1]), y[i:i + 1]).backward()
        twin_opt.step()
        new = dict(twin.named_parameters())
        deltas.append({n: new[n].detach() - params[n] for n in names})
    w = w.detach().clone().requires_grad_(True)
    lookahead = {n: params[n] + sum(w[i] * deltas[i][n] for i in range(len(x))) for n in names}
    loss = per_example_losses(model, lookahead, buffers, dev_x, dev_y).mean()
    return torch.autograd.grad(loss, w)[0]


def sparse_embedding_table(model: nn.Module, params: dict, x: Tensor) -> str | None:
    """Name of the word-embedding table to step row-sparsely: the model's `token_embedding_param`
    when it is among the stepped `params` and `x` holds token ids (not embeddings); else None."""
    table = getattr(model, "token_embedding_param", None)
    return table if table in params and not torch.is_floating_point(x) else None


def lookahead_meta_gradient(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                            dev_x: Tensor, dev_y: Tensor, w: Tensor, *, modes: PassModes = PassModes(),
                            dev_generator: torch.Generator | None = None,
                            sparse_embedding: bool = True, loss_fn: LossFn = cross_entropy_per_example) -> Tensor:
    """dL_dev/dw for the optimizer in use (SGD, Adam or AdamW), each pass in its mode of `modes`
    (default: both in eval mode; the hu19 official modes are `papers.hu19` config). `dev_generator`
    shuffles the dev batches when `modes.dev_batch_size` is set. Parameter groups may differ in
    weight decay only (e.g. no decay on biases and LayerNorm). A model with a
    `token_embedding_param` attribute (the name of its word-embedding table, e.g. TextClassifier)
    gets the exact sparse-row treatment of that table under Adam (see adam_meta_gradient) unless
    `sparse_embedding` is False."""
    hp = optimizer_hyper(optimizer, model)
    w = w.to(x.device)
    batches = dev_batches(len(dev_y), modes, dev_generator)
    with in_mode(model, "eval"):
        params, buffers = trainable_params(model), model_buffers(model)
        if isinstance(hp, SGDHyper):
            return sgd_meta_gradient(model, params, buffers, x, y, dev_x, dev_y, w,
                                     sgd_optimizer_state(optimizer, model), hp, modes, batches, loss_fn)
        table = sparse_embedding_table(model, params, x) if sparse_embedding else None
        return adam_meta_gradient(model, params, buffers, x, y, dev_x, dev_y, w,
                                  adam_optimizer_state(optimizer, model), hp, token_embedding=table,
                                  modes=modes, batches=batches, loss_fn=loss_fn)


def optimizer_hyper(optimizer: torch.optim.Optimizer, model: nn.Module) -> SGDHyper | AdamHyper:
    """The hyperparameters of a torch SGD (dampening 0, no Nesterov), Adam or AdamW whose parameter
    groups differ in weight decay only (e.g. none on biases and LayerNorm), by parameter name."""
    group = optimizer.param_groups[0]
    shared_keys = ("lr", "momentum", "betas", "eps", "nesterov", "dampening")
    for other in optimizer.param_groups[1:]:
        differing = [k for k in shared_keys if k in group and other.get(k) != group[k]]
        if differing:
            raise ValueError(f"lookahead: parameter groups differ in {differing}; "
                             "only weight_decay may differ between groups")
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay = {name_of[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    if isinstance(optimizer, torch.optim.SGD):
        if group.get("nesterov") or group.get("dampening"):
            raise ValueError("SGD lookahead supports dampening=0, nesterov=False")
        return SGDHyper(group["lr"], group["momentum"], decay)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return AdamHyper(group["lr"], tuple(group["betas"]), group["eps"], decay,
                         decoupled=isinstance(optimizer, torch.optim.AdamW))
    raise ValueError(f"no lookahead for optimizer {type(optimizer).__name__}")
