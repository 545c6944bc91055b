"""Influence functions of *Learning to Augment Influential Data* (ICLR 2019 submission), Sec. 3.

Notation of the paper: training set z^tr = {z_i}_{i=1..N}, validation set z^val, loss l(z, theta),
empirical risk (Eq. 1) L(z^tr, theta) = 1/N sum_i l(z_i, theta) (here plus an optional L2 term
l2/2 ||theta||^2 that belongs to the objective, never to a sample: removing z_i keeps it and the 1/N,
i.e. it is the upweighting of Eq. 6 with eps = -1/N), theta_hat its minimiser (Eq. 2), and the
Hessian H = 1/N sum_i grad^2 l(z_i, theta_hat) (+ l2 I), defined after Eq. 9.

* I_up,params(z_i)        = -H^-1 grad l(z_i)                                     (Eq. 8-9)
  theta_hat(z^tr \\ z_i) - theta_hat ~ -I_up,params(z_i) / N                       (Eq. 7)
* I_up,loss(z_i, z^val)   = -grad L(z^val)^T H^-1 grad l(z_i) = -s_val^T grad l(z_i)  (Eq. 11-14)
  L_val(theta_hat(z^tr \\ z_i)) - L_val(theta_hat) ~ -I_up,loss / N                (Eq. 10)
* I_aug,loss(z_i, z~_i, z^val) = -s_val^T (grad l(z~_i) - grad l(z_i))
                               = I_up,loss(z~_i) - I_up,loss(z_i)                 (Eq. 16-19)
  L_val(theta_hat) - L_val(theta_hat(z^tr u z~_i \\ z_i)) ~ -I_aug / N             (Eq. 15)
  so *minimising* I_aug lowers the validation loss. (Sec. 4.3's "maximizes the influence
  function" contradicts Eq. 15; we follow the equations.) The paper's n in Eq. 15 is N.

s_val = H^-1 grad L(z^val, theta_hat) (Sec. 3.4) is solved once and kept fixed. H is symmetric, so
grad l(z)^T s_val is one forward-mode pass (jvp along s_val) for a whole batch, differentiable in z.
Sec. 3.4 restricts the influence to the top fully connected layer of F while E is learned: softmax
cross-entropy of a linear layer on fixed features is convex, its Hessian has a closed form and is
solved directly (`LastLayerInfluence`); `Influence(params=[...])` is the same restriction in the
general form. Inverse-HVP solvers (generic in `hvp`): conjugate gradients (`cg_solve`), LiSSA
(`lissa_solve`, Agarwal et al. 2016 as used by Koh & Liang 2017), dense eigendecomposition
(`direct_solve`). All in float64. `retraining_check` compares Eq. 10 with leave-one-out retraining.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.optimize import minimize
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, cg, eigsh
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.func import linearize as func_linearize

DTYPE = torch.float64
HVP = Callable[[Tensor], Tensor]            # v [P] -> H v [P] (undamped)
LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs [B, ...], targets [B]) -> per-example losses [B]


class InfluenceError(ValueError):
    """A bad input to an influence computation; the message names the argument and the fix."""


@dataclass(frozen=True)
class SolveResult:
    """x ~ (H + damping I)^-1 b; residual = ||(H + damping I) x - b|| / ||b|| (exact, full-batch HVP)."""
    x: Tensor
    method: str
    damping: float
    iterations: int
    residual: float
    seconds: float
    hvps: int


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping < 0:
        raise InfluenceError(f"damping: {damping!r}; expected a finite number >= 0 (the solver inverts H + damping*I)")
    return float(damping)


def _check_vector(b: Tensor, n: int | None = None, name: str = "b") -> Tensor:
    b = torch.as_tensor(b).detach().to(DTYPE).reshape(-1)
    if n is not None and b.numel() != n:
        raise InfluenceError(f"{name}: {b.numel()} entries; expected {n} (one per parameter)")
    if not torch.isfinite(b).all():
        raise InfluenceError(f"{name}: has NaN/inf entries; the gradient it came from is not finite")
    return b


def check_positive_definite(lam_min: float, lam_max: float, damping: float, rtol: float = 1e-8) -> None:
    """Raise InfluenceError unless H + damping I is positive definite (smallest eigenvalue > rtol * |H|)."""
    size = max(abs(lam_max), abs(lam_min), 1e-300)
    if lam_min + damping > rtol * size:
        return
    if lam_min < -rtol * size:
        raise InfluenceError(
            f"damping={damping:g} is not above the most negative Hessian eigenvalue ({lam_min:.3g}): H + damping*I is "
            f"indefinite and H^-1 grad is not a minimiser's response (non-convex model). Use damping > {-lam_min:.3g}, "
            "or the convex last-layer form (Sec. 3.4, LastLayerInfluence)")
    raise InfluenceError(
        f"the Hessian is singular (smallest eigenvalue {lam_min:.3g}, largest {lam_max:.3g}) and damping={damping:g}: "
        f"H^-1 does not exist. Add damping > 0 (e.g. damping={max(1e-3 * lam_max, 1e-8):.3g}) or an L2 term (l2 > 0)")


def spectrum_bounds(hvp: HVP, n: int, dense_limit: int = 512) -> tuple[float, float, int]:
    """(smallest, largest eigenvalue of H, HVPs used): exact from n HVPs if n <= dense_limit, else Lanczos."""
    if n <= dense_limit:
        eye = torch.eye(n, dtype=DTYPE)
        dense = torch.stack([hvp(eye[k]) for k in range(n)], dim=1)
        ev = torch.linalg.eigvalsh((dense + dense.T) / 2)
        return float(ev[0]), float(ev[-1]), n
    count = [0]
    op = _operator(hvp, n, 0.0, count)
    out = []
    for which in ("SA", "LA"):
        try:
            out.append(float(eigsh(op, k=1, which=which, tol=1e-6, maxiter=20 * n, return_eigenvectors=False)[0]))
        except ArpackNoConvergence as err:  # partial result: still an upper/lower estimate
            out.append(float(err.eigenvalues[0]) if len(err.eigenvalues) else float("nan"))
    return out[0], out[1], count[0]


def _operator(hvp: HVP, n: int, damping: float, count: list[int]) -> LinearOperator:
    def matvec(v):
        count[0] += 1
        vt = torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(-1)))
        return (hvp(vt) + damping * vt).numpy()
    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def _residual(hvp: HVP, x: Tensor, b: Tensor, damping: float) -> float:
    return float((hvp(x) + damping * x - b).norm() / b.norm())


def direct_solve(hessian: Tensor, b: Tensor, damping: float = 0.0, rtol: float = 1e-8) -> SolveResult:
    """(H + damping I)^-1 b from the eigendecomposition of an explicit Hessian; singular/indefinite -> error."""
    damping = _check_damping(damping)
    t0 = time.perf_counter()
    h = torch.as_tensor(hessian, dtype=DTYPE)
    b = _check_vector(b, h.shape[0])
    ev, vec = torch.linalg.eigh((h + h.T) / 2)
    check_positive_definite(float(ev[0]), float(ev[-1]), damping, rtol)
    x = vec @ ((vec.T @ b) / (ev + damping))
    res = float(((h + damping * torch.eye(len(b), dtype=DTYPE)) @ x - b).norm() / b.norm().clamp_min(1e-300))
    return SolveResult(x, "direct", damping, 0, res, time.perf_counter() - t0, 0)


def cg_solve(hvp: HVP, b: Tensor, *, damping: float = 0.0, rtol: float = 1e-10, maxiter: int | None = None,
             check_spd: bool = True, dense_limit: int = 512) -> SolveResult:
    """(H + damping I)^-1 b by conjugate gradients (scipy.sparse.linalg.cg on a LinearOperator of `hvp`).

    CG needs a positive definite operator: with `check_spd` the spectrum is bounded first
    (`spectrum_bounds`) and a singular or indefinite H + damping I raises InfluenceError; without
    it the same diagnosis runs only if CG fails (no convergence, non-finite x, or x^T b <= 0).
    `seconds`/`hvps` count the CG iterations and the final residual, not the check."""
    damping = _check_damping(damping)
    b = _check_vector(b)
    n = b.numel()
    if b.norm() == 0:
        return SolveResult(torch.zeros_like(b), "cg", damping, 0, 0.0, 0.0, 0)
    if check_spd:
        lo, hi, _ = spectrum_bounds(hvp, n, dense_limit)
        check_positive_definite(lo, hi, damping)
    count, iters = [0], [0]
    t0 = time.perf_counter()
    maxiter = maxiter or 10 * n
    x, info = cg(_operator(hvp, n, damping, count), b.numpy(), rtol=rtol, atol=0.0, maxiter=maxiter,
                 callback=lambda _xk: iters.__setitem__(0, iters[0] + 1))
    x = torch.from_numpy(np.asarray(x, dtype=np.float64).copy())
    res = _residual(hvp, x, b, damping) if torch.isfinite(x).all() else float("inf")
    seconds = time.perf_counter() - t0
    if info != 0 or not math.isfinite(res) or float(x @ b) <= 0:
        if not check_spd:
            lo, hi, _ = spectrum_bounds(hvp, n, dense_limit)
            check_positive_definite(lo, hi, damping)
        raise InfluenceError(f"maxiter={maxiter}: CG stopped after {iters[0]} iterations at relative "
                             f"residual {res:.2e} "
                             f"(rtol={rtol:g}); raise maxiter or damping (ill-conditioned Hessian)")
    return SolveResult(x, "cg", damping, iters[0], res, seconds, count[0] + 1)


def lissa_solve(hvp_sample: HVP, b: Tensor, *, scale: float, damping: float = 0.0, depth: int, repeats: int = 1,
                growth_limit: float = 10.0, hvp_full: HVP | None = None) -> SolveResult:
    """(H + damping I)^-1 b by LiSSA: per repeat h_0 = b, h_j = b + h_{j-1} - (H_j h_{j-1} + damping h_{j-1}) / scale
    with H_j a mini-batch Hessian (`hvp_sample` draws a new batch per call); the estimate is h_depth / scale,
    averaged over repeats. This is the truncated Neumann series of scale (H + damping I)^-1, which converges
    only if every eigenvalue of H_j + damping I lies in (0, 2 scale). Koh & Liang's (scale, damping d) is ours
    with damping = d * scale; depth * repeats ~ N visits each training point about once (batch size 1).

    Divergence guard: in exact arithmetic a convergent recursion has ||h_j|| <= (j + 1) ||b||; an iterate above
    growth_limit * (j + 1) ||b||, or non-finite, raises InfluenceError naming scale and damping (never a NaN
    result). `hvp_full` (the full-batch HVP) gives the exact residual."""
    damping = _check_damping(damping)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise InfluenceError(f"scale: {scale!r}; expected a finite number > 0 "
                             "(above half the largest Hessian eigenvalue)")
    for name, val in (("depth", depth), ("repeats", repeats)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise InfluenceError(f"{name}: {val!r}; expected a positive int")
    b = _check_vector(b)
    bnorm = float(b.norm())
    t0 = time.perf_counter()
    total = torch.zeros_like(b)
    for r in range(repeats):
        h = b.clone()
        for j in range(1, depth + 1):
            h = b + h - (hvp_sample(h) + damping * h) / scale
            hn = float(h.norm())
            if not math.isfinite(hn) or hn > growth_limit * (j + 1) * bnorm:
                raise InfluenceError(
                    f"LiSSA diverged at step {j}/{depth} of repeat {r + 1}/{repeats}: ||h|| = {hn:.3g} "
                    f"(bound {growth_limit * (j + 1) * bnorm:.3g}) with scale={scale:g}, damping={damping:g}. "
                    "It converges only if the eigenvalues of H + damping*I lie in (0, 2*scale): raise scale above "
                    "(lambda_max(H) + damping) / 2 (a mini-batch Hessian can exceed the full one) and damping "
                    "above -lambda_min(H) (non-convex models)")
        total += h / scale
    x = total / repeats
    res = _residual(hvp_full, x, b, damping) if hvp_full is not None and bnorm > 0 else float("nan")
    return SolveResult(x, "lissa", damping, depth * repeats, res, time.perf_counter() - t0,
                       depth * repeats + (hvp_full is not None))


def cross_entropy_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


class Influence:
    """Sec. 3.2-3.3 for a module F at its trained parameters theta_hat (general form, any differentiable model).

    `params`: names of the parameters theta the influence is taken over (default: all trainable); the others
    stay fixed (Sec. 3.4's restriction to the top layer is params=[<fc>.weight, <fc>.bias]). The model is
    copied to float64 in eval mode (BatchNorm statistics fixed, no dropout). `batch_size` chunks full-batch
    passes (memory only; the sums are exact). `linearize`: the full-batch HVP is traced once per theta_hat by
    torch.func.linearize of grad (the same forward-over-reverse product, ~10x less dispatch per call, keeps
    each chunk's graph in memory); False: a fresh torch.func.jvp of grad per call."""

    def __init__(self, model: nn.Module, train_x: Tensor, train_y: Tensor, *, params: Sequence[str] | None = None,
                 l2: float = 0.0, loss: LossFn = cross_entropy_per_example, batch_size: int | None = None,
                 linearize: bool = True):
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
            raise InfluenceError(f"l2: {l2!r}; expected a finite number >= 0")
        self.model = copy.deepcopy(model).to(DTYPE).eval()
        named = dict(self.model.named_parameters())
        names = list(params) if params is not None else [k for k, p in named.items() if p.requires_grad]
        unknown = [k for k in names if k not in named]
        if unknown or not names:
            raise InfluenceError(f"params: {unknown or names!r} not among the model's parameters {list(named)}")
        self.names, self.shapes = names, [named[k].shape for k in names]
        self.numels = [named[k].numel() for k in names]
        self.theta = torch.cat([named[k].detach().reshape(-1) for k in names])
        self.fixed = {k: p.detach() for k, p in named.items() if k not in names}
        self.fixed.update({k: b for k, b in self.model.named_buffers()})
        self.train_x, self.train_y = self._inputs(train_x), torch.as_tensor(train_y)
        self.n, self.l2, self.loss = len(self.train_x), float(l2), loss
        self.batch_size = batch_size or max(self.n, 1)
        self.linearize, self._linear = linearize, None

    @property
    def theta(self) -> Tensor:
        """theta_hat, flat float64 [P]; assigning it drops the cached linearised HVP."""
        return self._theta

    @theta.setter
    def theta(self, value: Tensor) -> None:
        self._theta, self._linear = torch.as_tensor(value, dtype=DTYPE).detach().reshape(-1), None

    @staticmethod
    def _inputs(x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        return x.to(DTYPE) if x.is_floating_point() else x

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        return {k: t.view(s) for k, t, s in zip(self.names, theta.split(self.numels), self.shapes)}

    def losses(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-example losses l(z, theta) [B] (no L2 term)."""
        out = functional_call(self.model, {**self.fixed, **self.unflatten(theta)}, (self._inputs(x),))
        return self.loss(out, y)

    def _chunks(self, x: Tensor, y: Tensor, w: Tensor | None = None):
        for i in range(0, len(x), self.batch_size):
            yield x[i:i + self.batch_size], y[i:i + self.batch_size], None if w is None else w[i:i + self.batch_size]

    def objective(self, theta: Tensor, weights: Tensor | None = None) -> Tensor:
        """Eq. 1 with per-example weights (default 1) and the L2 term: 1/N sum_i w_i l(z_i) + l2/2 ||theta||^2."""
        total = sum((self.losses(theta, xc, yc) * (1.0 if wc is None else wc)).sum()
                    for xc, yc, wc in self._chunks(self.train_x, self.train_y, weights))
        return total / self.n + 0.5 * self.l2 * (theta * theta).sum()

    def mean_loss(self, x: Tensor, y: Tensor, theta: Tensor | None = None) -> float:
        """L(z, theta) of Eq. 3 (validation loss; no L2 term)."""
        theta = self.theta if theta is None else theta
        with torch.no_grad():
            return float(sum(self.losses(theta, xc, yc).sum() for xc, yc, _ in self._chunks(x, y)) / len(x))

    def grad_mean(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_theta L(z, theta_hat) = 1/|z| sum grad l (e.g. grad L(z^val) of Eq. 14; no L2 term)."""
        x, y = self._inputs(x), torch.as_tensor(y)
        return sum(grad(self._summed, argnums=0)(self.theta, xc, yc) for xc, yc, _ in self._chunks(x, y)) / len(x)

    def _summed(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.losses(theta, x, y).sum()

    def per_example_grads(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_theta l(z_i, theta_hat) for each example [B, P]."""
        g = vmap(grad(lambda t, xi, yi: self.losses(t, xi[None], yi[None])[0]), in_dims=(None, 0, 0))
        return torch.cat([g(self.theta, xc, yc) for xc, yc, _ in self._chunks(self._inputs(x), torch.as_tensor(y))])

    def _hvp_on(self, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Forward-over-reverse HVP of the summed loss on (x, y): jvp of grad (Pearlmutter 1994)."""
        return jvp(lambda t: grad(self._summed)(t, x, y), (self.theta,), (v,))[1]

    def hvp(self, v: Tensor) -> Tensor:
        """H v with H = 1/N sum_i grad^2 l(z_i, theta_hat) + l2 I (undamped), full batch."""
        v = v.to(DTYPE)
        chunks = self._chunks(self.train_x, self.train_y)
        if not self.linearize:
            return sum(self._hvp_on(v, xc, yc) for xc, yc, _ in chunks) / self.n + self.l2 * v
        if self._linear is None:
            self._linear = [func_linearize(lambda t, xc=xc, yc=yc: grad(self._summed)(t, xc, yc), self.theta)[1]
                            for xc, yc, _ in chunks]
        return sum(f(v) for f in self._linear) / self.n + self.l2 * v

    def hvp_sampler(self, batch_size: int = 1, seed: int = 0) -> HVP:
        """v -> H_B v on a fresh uniformly drawn mini-batch B per call (for LiSSA); unbiased for H."""
        gen = torch.Generator().manual_seed(seed)

        def sample(v: Tensor) -> Tensor:
            idx = torch.randint(0, self.n, (batch_size,), generator=gen)
            return self._hvp_on(v, self.train_x[idx], self.train_y[idx]) / batch_size + self.l2 * v
        return sample

    def hessian(self) -> Tensor:
        """The explicit Hessian [P, P] (small models only): one HVP per basis vector."""
        eye = torch.eye(self.theta.numel(), dtype=DTYPE)
        return torch.stack([self.hvp(e) for e in eye], dim=1)

    def solve(self, b: Tensor, method: str = "cg", damping: float = 0.0, **kw) -> SolveResult:
        """(H + damping I)^-1 b by "cg" (cg_solve kwargs), "lissa" (scale, depth, repeats, batch_size, seed)
        or "direct" (explicit Hessian)."""
        b = _check_vector(b, self.theta.numel())
        if method == "cg":
            return cg_solve(self.hvp, b, damping=damping, **kw)
        if method == "lissa":
            sampler = self.hvp_sampler(kw.pop("batch_size", 1), kw.pop("seed", 0))
            return lissa_solve(sampler, b, damping=damping, hvp_full=self.hvp, **kw)
        if method == "direct":
            return direct_solve(self.hessian(), b, damping, **kw)
        raise InfluenceError(f"method: {method!r}; expected 'cg', 'lissa' or 'direct'")

    def s_val(self, val_x: Tensor, val_y: Tensor, method: str = "cg", damping: float = 0.0, **kw) -> SolveResult:
        """s_val = (H + damping I)^-1 grad L(z^val, theta_hat), precomputed and fixed (Sec. 3.4)."""
        return self.solve(self.grad_mean(val_x, val_y), method, damping, **kw)

    def up_params(self, x: Tensor, y: Tensor, method: str = "cg", damping: float = 0.0, **kw) -> Tensor:
        """I_up,params(z_i) = -H^-1 grad l(z_i, theta_hat) (Eq. 9) per example [B, P]; one solve each."""
        return torch.stack([-self.solve(g, method, damping, **kw).x for g in self.per_example_grads(x, y)])

    def up_loss(self, x: Tensor, y: Tensor, s_val: Tensor) -> Tensor:
        """I_up,loss(z_i, z^val) = -grad l(z_i)^T s_val (Eq. 13-14) per example [B], by one jvp along s_val;
        differentiable w.r.t. x (the gradient flows back into an augmentation model)."""
        s = s_val.x if isinstance(s_val, SolveResult) else s_val
        return -jvp(lambda t: self.losses(t, x, torch.as_tensor(y)), (self.theta,), (s.to(DTYPE),))[1]

    def aug_loss(self, x: Tensor, x_aug: Tensor, y: Tensor, s_val: Tensor) -> Tensor:
        """I_aug,loss(z_i, z~_i, z^val) = I_up,loss(z~_i) - I_up,loss(z_i) (Eq. 18-19) [B]; minimise it (Eq. 15)."""
        return self.up_loss(x_aug, y, s_val) - self.up_loss(x, y, s_val)


def _augmented(features: Tensor) -> Tensor:
    f = features.to(DTYPE)
    return torch.cat([f, torch.ones(len(f), 1, dtype=DTYPE)], dim=1)


def last_layer_hessian(features: Tensor, weight: Tensor, bias: Tensor, l2: float = 0.0, chunk: int = 4096) -> Tensor:
    """Closed-form Hessian of 1/N sum_n CE(W phi_n + b, y_n) + l2/2 ||(W, b)||^2 over (W, b) (Sec. 3.4).

    Per example it is (diag(p) - p p^T) (x) a a^T with p = softmax(W phi + b), a = [phi; 1]; it does not depend
    on the label. Parameter order: W row-major, then b (as Influence(params=[W, b]) flattens them)."""
    w, b = weight.detach().to(DTYPE), bias.detach().to(DTYPE)
    c, d = w.shape
    blocks = torch.zeros(c, d + 1, c, d + 1, dtype=DTYPE)
    for i in range(0, len(features), chunk):
        a = _augmented(features[i:i + chunk].detach())
        p = torch.softmax(a[:, :d] @ w.T + b, dim=1)
        q = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        blocks += torch.einsum("nce,nd,nf->cdef", q, a, a)
    h = blocks.reshape(c * (d + 1), c * (d + 1)) / len(features)
    order = torch.tensor([k * (d + 1) + j for k in range(c) for j in range(d)] + [k * (d + 1) + d for k in range(c)])
    return h[order][:, order] + l2 * torch.eye(c * (d + 1), dtype=DTYPE)


class LastLayerInfluence:
    """Sec. 3.4: the influence restricted to the top fully connected layer (W [C, D], b [C]) of F on fixed
    features phi(x). H is exact and solved directly; grad l(z) = vec((p - y) a^T), so
    I_up,loss(z) = -(p - y)^T S a with S = s_val reshaped [C, D + 1], differentiable in phi (Eq. 13-14)."""

    def __init__(self, weight: Tensor, bias: Tensor, train_features: Tensor, *, l2: float = 0.0,
                 damping: float = 0.0):
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
            raise InfluenceError(f"l2: {l2!r}; expected a finite number >= 0")
        self.weight, self.bias = weight.detach().to(DTYPE), bias.detach().to(DTYPE)
        self.damping = _check_damping(damping)
        self.hessian = last_layer_hessian(train_features, self.weight, self.bias, l2)

    def _residuals(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        a = _augmented(features)
        p = torch.softmax(a[:, :-1] @ self.weight.T + self.bias, dim=1)
        return p - F.one_hot(torch.as_tensor(targets), p.shape[1]).to(DTYPE), a

    def grad_mean(self, features: Tensor, targets: Tensor) -> Tensor:
        """grad_(W, b) of the mean CE over the given samples (closed form), flattened W row-major then b."""
        r, a = self._residuals(features.detach(), targets)
        g = r.T @ a / len(a)
        return torch.cat([g[:, :-1].reshape(-1), g[:, -1]])

    def s_val(self, val_features: Tensor, val_targets: Tensor) -> SolveResult:
        """s_val = (H + damping I)^-1 grad L(z^val) by a direct solve (singular H without damping -> error)."""
        return direct_solve(self.hessian, self.grad_mean(val_features, val_targets), self.damping)

    def up_loss(self, features: Tensor, targets: Tensor, s_val: Tensor | SolveResult) -> Tensor:
        """I_up,loss(z, z^val) = -grad l(z)^T s_val per example [B] (Eq. 13-14, closed form)."""
        s = (s_val.x if isinstance(s_val, SolveResult) else s_val).to(DTYPE)
        c, d = self.weight.shape
        mat = torch.cat([s[:c * d].view(c, d), s[c * d:].view(c, 1)], dim=1)
        r, a = self._residuals(features, targets)
        return -((r * (a @ mat.T)).sum(dim=1))

    def aug_loss(self, features: Tensor, aug_features: Tensor, targets: Tensor, s_val) -> Tensor:
        """I_aug,loss = I_up,loss(z~) - I_up,loss(z) (Eq. 19) [B]; E minimises its mean (Eq. 15)."""
        return self.up_loss(aug_features, targets, s_val) - self.up_loss(features, targets, s_val)


def fit(inf: Influence, theta0: Tensor | None = None, weights: Tensor | None = None, *, gtol: float = 1e-10,
        maxiter: int = 1000, dense_limit: int = 400) -> tuple[Tensor, float]:
    """Minimise `inf.objective` to convergence in float64 with a trust-region Newton method (scipy; exact
    second derivatives by plain double backward, quadratic convergence, safe in indefinite regions of
    non-convex models): "trust-exact" on the dense Hessian up to `dense_limit` parameters, else "trust-ncg"
    with HVPs. Returns (theta, ||gradient||_inf)."""
    def value(th: Tensor) -> Tensor:
        return inf.objective(th, weights)

    def fun(t):
        th = torch.from_numpy(t).requires_grad_()
        v = value(th)
        return float(v.detach()), torch.autograd.grad(v, th)[0].numpy()

    def hess(t):
        return torch.autograd.functional.hessian(value, torch.from_numpy(t), vectorize=True).numpy()

    def hessp(t, p):
        th = torch.from_numpy(t).requires_grad_()
        g = torch.autograd.grad(value(th), th, create_graph=True)[0]
        return torch.autograd.grad(g @ torch.from_numpy(p), th)[0].numpy()
    x0 = (inf.theta if theta0 is None else theta0).detach().numpy().copy()
    dense = x0.size <= dense_limit
    out = minimize(fun, x0, jac=True, method="trust-exact" if dense else "trust-ncg",
                   **({"hess": hess} if dense else {"hessp": hessp}), options={"gtol": gtol, "maxiter": maxiter})
    return torch.from_numpy(out.x.copy()), float(np.abs(fun(out.x)[1]).max())


def retraining_check(model: nn.Module, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *,
                     l2: float = 0.0, damping: float = 0.0, indices: Sequence[int] | None = None, method: str = "cg",
                     params: Sequence[str] | None = None, fit_model: bool = True, gtol: float = 1e-10,
                     solver: dict | None = None) -> dict:
    """Predicted vs actual change of the validation loss when removing each training point (Eq. 10).

    predicted_i = -I_up,loss(z_i, z^val) / N = grad l(z_i)^T s_val / N, s_val = (H + damping I)^-1 grad L_val;
    actual_i = L_val(theta_hat_{-i}) - L_val(theta_hat), theta_hat_{-i} retrained to convergence (L-BFGS, warm
    start from theta_hat as Koh & Liang) on the objective with w_i = 0 (same 1/N and L2: Eq. 6 with eps = -1/N).
    `fit_model`: first train `model` to convergence on the full training set. Returns pearson, spearman,
    predicted, actual (numpy, order of `indices`), indices and diagnostics (solve, gradient norms)."""
    inf = Influence(model, train_x, train_y, params=params, l2=l2)
    grad_inf = float(grad(inf.objective)(inf.theta).abs().max())
    if fit_model:
        inf.theta, grad_inf = fit(inf, gtol=gtol)
    sol = inf.s_val(val_x, val_y, method=method, damping=damping, **(solver or {}))
    idx = list(range(inf.n)) if indices is None else [int(i) for i in indices]
    predicted = (-inf.up_loss(inf.train_x[idx], inf.train_y[idx], sol) / inf.n).detach().numpy()
    base = inf.mean_loss(val_x, val_y)
    actual, worst = np.empty(len(idx)), 0.0
    for k, i in enumerate(idx):
        w = torch.ones(inf.n, dtype=DTYPE)
        w[i] = 0.0
        theta_i, gn = fit(inf, inf.theta, w, gtol=gtol)
        actual[k], worst = inf.mean_loss(val_x, val_y, theta_i) - base, max(worst, gn)
    return {"pearson": float(stats.pearsonr(predicted, actual)[0]),
            "spearman": float(stats.spearmanr(predicted, actual)[0]),
            "predicted": predicted, "actual": actual, "indices": idx, "n_train": inf.n,
            "solve": {"method": sol.method, "damping": sol.damping, "iterations": sol.iterations,
                      "residual": sol.residual, "seconds": sol.seconds},
            "grad_inf_full": grad_inf, "grad_inf_retrained_max": worst, "theta": inf.theta}
