"""MMEL: minimise the maximal expected loss over each example's augmented views (Yi et al., ICLR 2021).

Everything works on a whole batch of groups at once: row i of a [N, |B|] loss matrix holds the
losses of the |B| views z in B(x_i); weights are normalised within a row, never across rows.

Per example, the inner problem (Eq. 3-4, proof in Appendix A, Eq. 10) is

    max_{P on B(x_i)}  sum_z P(z) l(z) - lambda_P KL(P || P_U),     P_U uniform on B(x_i),

whose unique maximiser is P*(z) = softmax_z(l(z) / lambda_P) (Eq. 6) with value
lambda_P * log mean_z exp(l(z) / lambda_P) (`max_expected_loss`). The objective is strictly concave
in P, so by Danskin's theorem the gradient of the max w.r.t. the model equals the gradient of
sum_z P*(z) l(z) with P* held fixed: detaching P* (`mmel_weights`) is exact, not an approximation,
and the -lambda_P KL(P*||P_U) term (a constant once P* is fixed) changes the value, never the gradient.
Every loss here returns `MMELLoss.loss` whose value is the paper's objective *including* that KL
term (Eq. 7 or Eq. 8, mean over examples) and whose gradient is the Danskin gradient; the value is
computed from Theorem 1's closed form, which avoids float32 cancellation for large lambda_P.

Choices the paper leaves open (the package README repeats them):

* View 0 of every group is the original x_i (the paper assumes x_i in B(x_i), Sec. 3.1; Eq. 8-9 need
  to know which view it is). The hard loss treats it like any other view.
* Soft loss (Eq. 8): the divergence l(f(z), f(x_i)) is not named. We use KL(f(x_i) || f(z)) with
  f(x_i) *detached*: a cross-entropy to a fixed soft target, as in the UDA consistency loss the
  paper cites for it (Xie et al., 2019), and the role Appendix B gives f(x_i) ("supervision" for z).
  Not detaching would let the consistency term pull f(x_i) toward the augmented predictions, which
  the supervised term on x_i does not ask for. KL and the cross-entropy to the same target differ by
  H(f(x_i)), a constant within a row, so P* (Eq. 9) and all gradients are identical for both; KL is
  reported because it is 0 when the views agree.
* lambda_T multiplies the whole bracket of Eq. 8, i.e. also its KL term (as written); P* of Eq. 9 is
  normalised over the |B|-1 augmented views and its KL is to the uniform distribution on those.
* Image classification (Sec. 4.1): every view keeps the original label. Text (Sec. 3.3): labels may
  instead be teacher probabilities per view, [N, |B|, C] (view 0, x_i itself, can carry one-hot y_i:
  the paper replaces y_z only for augmented z; the caller builds the tensor);
  in the soft loss a view the teacher assigns
  to a class other than the label y_i gets the teacher's probabilities as target instead of f(x_i)
  ("predicted to a different class from x_i": we compare with y_i, not with the teacher's argmax on x_i).
* STS-B regression (Sec. 4.2): l = squared error of the scalar prediction; in the soft loss the
  target f(x_i) of view z is replaced by the teacher's prediction on z where |f(x_i) - teacher(z)| > 0.5
  (strictly), and the original view is fitted to y_i.
* lambda_P = math.inf is allowed and gives exactly uniform weights (DA+UNI, Remark 1): `da_uni_loss`
  is `mmel_h_loss(..., lambda_P=inf)`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STSB_TEACHER_THRESHOLD = 0.5  # Sec. 4.2


class MMELLoss(NamedTuple):
    """`loss`: scalar to backpropagate, value = mean over examples of Eq. 7 / Eq. 8 (KL term
    included); `weights`: P* [N, |B|] (hard) or [N, |B|-1] (soft, augmented views only), detached;
    `kl`: KL(P* || uniform) per example [N], detached (0 for uniform weights)."""

    loss: Tensor
    weights: Tensor
    kl: Tensor


# ---------------------------------------------------------------------------------------- checks
def _check_lambda(name: str, value: float, *, allow_zero: bool, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")  # noqa: TRY004 (one error type)
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}{' (inf allowed)' if allow_inf else ' and finite'}, got {value!r}")
    return v


def _check_losses(losses: Tensor, name: str = "losses") -> None:
    if not isinstance(losses, Tensor) or losses.dim() != 2 or not losses.is_floating_point():
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"{name} must be a float tensor [N, |B|], got {got}")
    if losses.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (N = 0)")
    if losses.shape[1] < 2:
        raise ValueError(f"{name}: each group needs |B| >= 2 views, got |B| = {losses.shape[1]}")


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor [N, |B|, C], got {got}")
    _check_losses(logits[..., 0], "logits")


def _check_labels(labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point():
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [N] = [{n}], got {got}")


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {list(shape)}, got {got}")


# ------------------------------------------------------------------------------- Eq. 3-6 (inner max)
def mmel_weights(losses: Tensor, lambda_p: float) -> Tensor:
    """P* [N, |B|] of Eq. 6 (Eq. 9 when `losses` are the soft losses of the augmented views):
    softmax over each row of losses / lambda_P, detached (exact by Danskin, module docstring).
    lambda_P = inf gives exactly 1/|B| (finite losses / inf = 0)."""
    _check_losses(losses)
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    return torch.softmax(losses.detach() / lam, dim=1)


def kl_to_uniform(weights: Tensor) -> Tensor:
    """KL(P || P_U) = sum_z P(z) log(|B| P(z)) per row [N] (the penalty of Eq. 5, 7, 8; 0 log 0 = 0)."""
    return torch.xlogy(weights, weights * weights.shape[-1]).sum(-1)


def inner_objective(losses: Tensor, weights: Tensor, lambda_p: float) -> Tensor:
    """Eq. 3 per example [N]: E_P[l] - lambda_P KL(P || P_U), for any weights P on the rows."""
    _check_losses(losses)
    _check_shape("weights", weights, tuple(losses.shape))
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=False)
    return (weights * losses).sum(1) - lam * kl_to_uniform(weights)


def max_expected_loss(losses: Tensor, lambda_p: float) -> Tensor:
    """sup_P of Eq. 3 per example [N], differentiable: lambda_P log mean_z exp(l(z) / lambda_P)
    (Eq. 5 evaluated at Eq. 6); the mean over z for lambda_P = inf. Computed as
    mean(l) + lambda_P [m + log1p(mean(expm1(s - m)))], s = (l - mean(l)) / lambda_P, m = max(s): no
    overflow for small lambda_P and no float32 cancellation (an O(1) error times lambda_P) for large."""
    _check_losses(losses)
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    return _stable_max(losses, lam)


def _stable_max(losses: Tensor, lam: float) -> Tensor:
    mean = losses.mean(1, keepdim=True)
    if math.isinf(lam):
        return mean[:, 0]
    centred = (losses - mean) / lam
    top = centred.max(1, keepdim=True).values
    return (mean + lam * (top + torch.log1p(torch.expm1(centred - top).mean(1, keepdim=True))))[:, 0]


def _reweighted(losses: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example value of Eq. 7's bracket, P*, KL(P*||P_U); `lam` and the shape of `losses`
    [N, k >= 1] are checked by the caller (k = 1: P* = 1, KL = 0). The gradient is that of
    sum_z P*(z) l(z) with P* fixed (Danskin); the value is Theorem 1's closed form (`_stable_max`),
    equal to sum_z P* l - lambda_P KL(P*||P_U) but without its catastrophic cancellation when
    lambda_P is large (P* ~ uniform, KL ~ 1e-7 noise times lambda_P)."""
    weights = torch.softmax(losses.detach() / lam, dim=1)
    weighted = (weights * losses).sum(1)
    if math.isinf(lam):  # P* = P_U exactly, KL = 0 (Remark 1): plain average, DA+UNI
        return weighted, weights, torch.zeros_like(weighted.detach())
    value = _stable_max(losses.detach(), lam)
    return weighted + (value - weighted.detach()), weights, kl_to_uniform(weights)


# ---------------------------------------------------------------------------- classification losses
def view_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of every view [N, |B|]. `labels`: [N] integer (every view keeps y_i, Sec. 4.1),
    [N, |B|] integer (a label y_z per view) or [N, |B|, C] float probabilities (a teacher's output
    per view, Sec. 3.3)."""
    _check_logits(logits)
    n, b, c = logits.shape
    if isinstance(labels, Tensor) and labels.is_floating_point():
        _check_shape("labels (probabilities)", labels, (n, b, c))
        target = labels.reshape(n * b, c)
    elif isinstance(labels, Tensor) and labels.dim() == 2:
        _check_shape("labels (per view)", labels, (n, b))
        target = labels.reshape(n * b)
    else:
        _check_labels(labels, n)
        target = labels[:, None].expand(n, b).reshape(n * b)
    return F.cross_entropy(logits.reshape(n * b, c), target, reduction="none").view(n, b)


def mmel_h_loss(logits: Tensor, labels: Tensor, lambda_p: float = 1.0) -> MMELLoss:
    """MMEL-H (Eq. 7 with P* of Eq. 6), mean over the N examples. logits [N, |B|, C]."""
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    per_example, weights, kl = _reweighted(view_cross_entropy(logits, labels), lam)
    return MMELLoss(per_example.mean(), weights, kl)


def da_uni_loss(logits: Tensor, labels: Tensor) -> MMELLoss:
    """Baseline(DA+UNI) (Sec. 4.1; Eq. 1): uniform weights 1/|B| on the same views; identical to
    mmel_h_loss with lambda_P = inf (Remark 1)."""
    return mmel_h_loss(logits, labels, math.inf)


def soft_divergence(logits: Tensor, target_probs: Tensor) -> Tensor:
    """KL(target || softmax(logits)) over the last dim, per view: the l(f(z), f(x_i)) of Eq. 8-9."""
    return torch.xlogy(target_probs, target_probs).sum(-1) - (target_probs * F.log_softmax(logits, -1)).sum(-1)


def replace_mismatched_targets(targets: Tensor, teacher_probs: Tensor, labels: Tensor) -> Tensor:
    """Sec. 3.3, soft loss: an augmented view z whose teacher argmax differs from y_i gets the
    teacher's probabilities as target instead of f(x_i). targets, teacher_probs [N, |B|-1, C]."""
    _check_shape("teacher_probs", teacher_probs, tuple(targets.shape))
    mismatch = teacher_probs.argmax(-1) != labels[:, None]
    return torch.where(mismatch[..., None], teacher_probs, targets)


def mmel_s_loss(logits: Tensor, labels: Tensor, lambda_p: float = 1.0, lambda_t: float = 1.0,
                teacher_probs: Tensor | None = None) -> MMELLoss:
    """MMEL-S (Eq. 8 with P* of Eq. 9), mean over examples. View 0 is x_i: CE(f(x_i), y_i); views
    1..|B|-1 get lambda_T * [sum_z P*(z) KL(f(x_i) || f(z)) - lambda_P KL(P* || U_{|B|-1})], f(x_i)
    detached. `teacher_probs` [N, |B|-1, C] (optional, text): the teacher on the augmented views."""
    _check_logits(logits)
    n, b, c = logits.shape
    _check_labels(labels, n)
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    lam_t = _check_lambda("lambda_t", lambda_t, allow_zero=True, allow_inf=False)
    supervised = F.cross_entropy(logits[:, 0], labels, reduction="none")
    targets = torch.softmax(logits[:, 0].detach(), -1)[:, None].expand(n, b - 1, c)
    if teacher_probs is not None:
        targets = replace_mismatched_targets(targets, teacher_probs.detach(), labels)
    consistency, weights, kl = _reweighted(soft_divergence(logits[:, 1:], targets), lam)
    return MMELLoss((supervised + lam_t * consistency).mean(), weights, kl)


# ------------------------------------------------------------------------- STS-B regression (Sec. 4.2)
def teacher_replacement(student_pred: Tensor, teacher_pred: Tensor,
                        threshold: float = STSB_TEACHER_THRESHOLD) -> Tensor:
    """Sec. 4.2: each entry of the soft target f(x_i) is replaced by the teacher's prediction where
    the two differ by more than `threshold` (strictly), elementwise; shapes must broadcast."""
    thr = _check_lambda("threshold", threshold, allow_zero=True, allow_inf=True)
    try:
        return torch.where((student_pred - teacher_pred).abs() > thr, teacher_pred, student_pred)
    except RuntimeError as exc:
        raise ValueError(f"teacher_pred {tuple(teacher_pred.shape)} does not broadcast with student_pred "
                         f"{tuple(student_pred.shape)}") from exc


def mmel_h_regression_loss(preds: Tensor, targets: Tensor, lambda_p: float = 1.0) -> MMELLoss:
    """MMEL-H for regression: Eq. 7 with l = squared error. preds [N, |B|]; targets [N] (y_i for
    every view) or [N, |B|] (a teacher's prediction per view, Sec. 4.2)."""
    _check_losses(preds, "preds")
    if isinstance(targets, Tensor) and targets.dim() == 1:
        _check_shape("targets", targets, (preds.shape[0],))
        targets = targets[:, None]
    else:
        _check_shape("targets", targets, tuple(preds.shape))
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    per_example, weights, kl = _reweighted((preds - targets.detach()) ** 2, lam)
    return MMELLoss(per_example.mean(), weights, kl)


def mmel_s_regression_loss(preds: Tensor, labels: Tensor, lambda_p: float = 1.0, lambda_t: float = 1.0,
                           teacher_preds: Tensor | None = None,
                           threshold: float = STSB_TEACHER_THRESHOLD) -> MMELLoss:
    """MMEL-S for regression (Sec. 4.2): (f(x_i) - y_i)^2 + lambda_T [sum_z P*(z) (f(z) - t_z)^2 -
    lambda_P KL], t_z = f(x_i) (detached) or teacher(z) where they differ by > threshold.
    preds [N, |B|] (view 0 = x_i); labels [N] float; teacher_preds [N, |B|-1]."""
    _check_losses(preds, "preds")
    n, b = preds.shape
    _check_shape("labels", labels, (n,))
    lam = _check_lambda("lambda_p", lambda_p, allow_zero=False, allow_inf=True)
    lam_t = _check_lambda("lambda_t", lambda_t, allow_zero=True, allow_inf=False)
    targets = preds[:, :1].detach().expand(n, b - 1)
    if teacher_preds is not None:
        _check_shape("teacher_preds", teacher_preds, (n, b - 1))
        targets = teacher_replacement(targets, teacher_preds.detach(), threshold)
    consistency, weights, kl = _reweighted((preds[:, 1:] - targets) ** 2, lam)
    return MMELLoss(((preds[:, 0] - labels) ** 2 + lam_t * consistency).mean(), weights, kl)


def view_logits(model: nn.Module, views: Tensor) -> Tensor:
    """Model outputs of a [N, |B|, ...] batch of view groups as [N, |B|, ...out]: one forward over
    all N*|B| views (Sec. 3.3: "computed in parallel"), so BatchNorm statistics mix all views."""
    if views.dim() < 3:
        raise ValueError(f"views must be [N, |B|, ...], got {tuple(views.shape)}")
    n, b = views.shape[:2]
    out = model(views.reshape(n * b, *views.shape[2:]))
    return out.reshape(n, b, *out.shape[1:])
