"""MMEL (Yi et al. 2021): Eq. 6 against a generic optimiser, Danskin gradients, Eq. 7-9, Sec. 4.2."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from papers.mmel.mmel import (
    da_uni_loss,
    inner_objective,
    kl_to_uniform,
    max_expected_loss,
    mmel_h_loss,
    mmel_h_regression_loss,
    mmel_s_loss,
    mmel_s_regression_loss,
    mmel_weights,
    replace_mismatched_targets,
    soft_divergence,
    teacher_replacement,
    view_cross_entropy,
    view_logits,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _slsqp_max(losses: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Generic constrained maximiser of Eq. 3 on the simplex (SLSQP), from a random interior start."""
    b = len(losses)

    def neg(p):
        p = np.clip(p, 1e-300, None)
        return -(p @ losses - lam * np.sum(p * np.log(b * p)))

    def neg_grad(p):
        p = np.clip(p, 1e-300, None)
        return -(losses - lam * (np.log(b * p) + 1.0))

    start = np.random.default_rng(0).dirichlet(np.ones(b))
    res = minimize(neg, start, jac=neg_grad, method="SLSQP", bounds=[(1e-12, 1.0)] * b,
                   constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones(b)}],
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success, res.message
    return res.x, -res.fun


# ----------------------------------------------------------------------------- Eq. 6: the maximiser
@pytest.mark.parametrize("lam", [0.3, 1.0, 3.0])
def test_eq6_is_the_maximiser_of_the_inner_objective(lam):
    losses = torch.rand(4, 5, generator=_gen(1), dtype=torch.float64) * 3
    weights = mmel_weights(losses, lam)
    closed_value = inner_objective(losses, weights, lam)
    for i in range(losses.shape[0]):
        p_num, value_num = _slsqp_max(losses[i].numpy(), lam)
        np.testing.assert_allclose(weights[i].numpy(), p_num, atol=2e-5)
        assert closed_value[i].item() >= value_num - 1e-10
    # Eq. 5 at Eq. 6 equals lambda * log mean exp(l / lambda); no random point of the simplex beats it
    torch.testing.assert_close(closed_value, max_expected_loss(losses, lam))
    random_p = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((200,))
    for i in range(losses.shape[0]):
        others = inner_objective(losses[i].expand(200, 5).contiguous(), random_p, lam)
        assert bool((others <= closed_value[i] + 1e-12).all())


def test_weights_sum_to_one_and_favour_larger_losses():
    losses = torch.randn(6, 7, generator=_gen(2))
    w = mmel_weights(losses, 1.0)
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    assert bool((w > 0).all())
    order_l, order_w = losses.argsort(1), w.argsort(1)
    assert torch.equal(order_l, order_w)
    assert not w.requires_grad


def test_no_leakage_across_examples_and_group_order_invariance():
    losses = torch.rand(5, 4, generator=_gen(3))
    w = mmel_weights(losses, 0.7)
    changed = losses.clone()
    changed[2] = torch.tensor([9.0, -3.0, 0.0, 100.0])
    w2 = mmel_weights(changed, 0.7)
    keep = [0, 1, 3, 4]
    assert torch.equal(w[keep], w2[keep])
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert torch.equal(mmel_weights(losses[perm], 0.7), w[perm])
    logits = torch.randn(5, 4, 3, generator=_gen(4))
    labels = torch.tensor([0, 2, 1, 1, 0])
    out, out_perm = mmel_h_loss(logits, labels), mmel_h_loss(logits[perm], labels[perm])
    torch.testing.assert_close(out.loss, out_perm.loss)
    assert torch.equal(out_perm.weights, out.weights[perm])


def test_small_lambda_concentrates_on_the_hardest_view():
    losses = torch.tensor([[0.1, 2.0, 1.9], [3.0, 0.0, 0.5]])
    w = mmel_weights(losses, 1e-3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------------- lambda_P -> inf gives DA+UNI
def test_lambda_to_infinity_gives_da_uni():
    logits = torch.randn(4, 6, 5, generator=_gen(5), requires_grad=True)
    labels = torch.tensor([4, 0, 1, 3])
    uni = da_uni_loss(logits, labels)
    (g_uni,) = torch.autograd.grad(uni.loss, logits)
    torch.testing.assert_close(uni.loss, F.cross_entropy(logits.reshape(24, 5), labels.repeat_interleave(6)))
    torch.testing.assert_close(uni.weights, torch.full((4, 6), 1 / 6))
    assert torch.equal(uni.kl, torch.zeros(4))
    exact = mmel_h_loss(logits, labels, math.inf)
    assert torch.equal(exact.loss, uni.loss) and torch.equal(exact.weights, uni.weights)
    large = mmel_h_loss(logits, labels, 1e7)
    (g_large,) = torch.autograd.grad(large.loss, logits)
    torch.testing.assert_close(large.loss, uni.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_large, g_uni, atol=1e-7, rtol=0)
    # soft loss: uniform average of the |B|-1 divergences
    soft_inf = mmel_s_loss(logits, labels, math.inf, 0.5)
    torch.testing.assert_close(mmel_s_loss(logits, labels, 1e7, 0.5).loss, soft_inf.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(soft_inf.weights, torch.full((4, 5), 1 / 5))


# ------------------------------------------------------------------------------ Danskin gradients
def _max_objective(logits, labels, lam):
    """mean_i sup_P Eq. 3 with the CE losses: Theorem 1's value, differentiable in closed form."""
    return max_expected_loss(view_cross_entropy(logits, labels), lam).mean()


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
def test_hard_loss_gradient_is_danskin_and_matches_finite_differences(lam):
    logits = torch.randn(2, 3, 4, generator=_gen(6), dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 3])
    out = mmel_h_loss(logits, labels, lam)
    (grad,) = torch.autograd.grad(out.loss, logits)
    # value: Eq. 7 with the KL term equals the max of Eq. 3
    torch.testing.assert_close(out.loss, _max_objective(logits, labels, lam))
    # autograd of the formula with P* held fixed (a constant)
    p_fixed = torch.softmax(view_cross_entropy(logits, labels).detach() / lam, 1)
    (grad_fixed,) = torch.autograd.grad((p_fixed * view_cross_entropy(logits, labels)).sum(1).mean(), logits)
    torch.testing.assert_close(grad, grad_fixed)
    # differentiating through P* and the KL term gives the same (envelope / Danskin)
    ce = view_cross_entropy(logits, labels)
    p_live = torch.softmax(ce / lam, 1)
    (grad_live,) = torch.autograd.grad(((p_live * ce).sum(1) - lam * kl_to_uniform(p_live)).mean(), logits)
    torch.testing.assert_close(grad, grad_live)
    # central finite differences of the max objective, all 2 * numel perturbations in one batch
    eps, k = 1e-6, logits.numel()
    with torch.no_grad():
        bumps = torch.eye(k, dtype=torch.float64).view(k, *logits.shape) * eps
        shifted = torch.cat([logits.detach() + bumps, logits.detach() - bumps])  # [2k, N, B, C]
        ce = view_cross_entropy(shifted.reshape(-1, *logits.shape[1:]), labels.repeat(2 * k))
        values = max_expected_loss(ce, lam).view(2 * k, -1).mean(1)
        fd = ((values[:k] - values[k:]) / (2 * eps)).view_as(logits)
    torch.testing.assert_close(grad, fd, atol=1e-8, rtol=1e-6)


def test_hard_loss_accepts_per_view_and_probability_labels():
    logits = torch.randn(3, 4, 5, generator=_gen(7))
    per_view = torch.randint(0, 5, (3, 4), generator=_gen(8))
    probs = F.one_hot(per_view, 5).float()
    torch.testing.assert_close(mmel_h_loss(logits, per_view).loss, mmel_h_loss(logits, probs).loss)
    shared = torch.tensor([1, 0, 4])
    torch.testing.assert_close(view_cross_entropy(logits, shared),
                               view_cross_entropy(logits, shared[:, None].expand(3, 4)))


# ----------------------------------------------------------------------------- soft loss, Eq. 8-9
def _soft_reference(logits, labels, lam_p, lam_t):
    """Eq. 8 per example with explicit loops: the original view is index 0, f(x_i) a fixed target."""
    n, b, _ = logits.shape
    total = 0.0
    for i in range(n):
        target = torch.softmax(logits[i, 0], -1)
        div = torch.stack([(target * (target.log() - torch.log_softmax(logits[i, z], -1))).sum()
                           for z in range(1, b)])
        p = torch.exp(div / lam_p) / torch.exp(div / lam_p).sum()
        bracket = (p * div - lam_p * p * torch.log((b - 1) * p)).sum()
        total = total + F.cross_entropy(logits[i, 0], labels[i]) + lam_t * bracket
    return total / n


def test_soft_loss_value_weights_and_gradients():
    logits = torch.randn(3, 5, 4, generator=_gen(9), dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 2])
    lam_p, lam_t = 0.8, 2.0
    out = mmel_s_loss(logits, labels, lam_p, lam_t)
    torch.testing.assert_close(out.loss, _soft_reference(logits.detach(), labels, lam_p, lam_t))
    assert out.weights.shape == (3, 4)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(3, dtype=torch.float64))
    # KL and the cross-entropy to the same soft target differ by H(f(x_i)): identical P* (Eq. 9)
    target = torch.softmax(logits[:, 0].detach(), -1)[:, None]
    ce_to_target = -(target * torch.log_softmax(logits[:, 1:].detach(), -1)).sum(-1)
    torch.testing.assert_close(out.weights, mmel_weights(ce_to_target, lam_p))
    (grad,) = torch.autograd.grad(out.loss, logits)
    # f(x_i) is detached: the original view's gradient is that of CE(f(x_i), y_i) alone
    onehot = F.one_hot(labels, 4).double()
    torch.testing.assert_close(grad[:, 0], (torch.softmax(logits[:, 0].detach(), -1) - onehot) / 3)
    # augmented views: lambda_T * P*(z) * (f(z) - f(x_i)) / N
    expected = lam_t * out.weights[..., None] * (torch.softmax(logits[:, 1:].detach(), -1) - target) / 3
    torch.testing.assert_close(grad[:, 1:], expected)


def test_soft_loss_lambda_t_zero_and_two_views():
    logits = torch.randn(4, 2, 3, generator=_gen(10))
    labels = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(mmel_s_loss(logits, labels, 1.0, 0.0).loss, F.cross_entropy(logits[:, 0], labels))
    out = mmel_s_loss(logits, labels, 1.0, 1.0)  # one augmented view: P* = 1, no KL
    assert torch.equal(out.weights, torch.ones(4, 1)) and torch.equal(out.kl, torch.zeros(4))
    div = soft_divergence(logits[:, 1], torch.softmax(logits[:, 0], -1))
    torch.testing.assert_close(out.loss, (F.cross_entropy(logits[:, 0], labels, reduction="none") + div).mean())


def test_soft_loss_teacher_replaces_the_target_of_mismatched_views():
    targets = torch.full((2, 3, 3), 1 / 3)
    teacher = torch.tensor([[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
                            [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]])
    labels = torch.tensor([0, 1])
    out = replace_mismatched_targets(targets, teacher, labels)
    replaced = torch.tensor([[False, True, True], [False, True, False]])
    assert torch.equal(out[replaced], teacher[replaced])
    assert torch.equal(out[~replaced], targets[~replaced])
    logits = torch.randn(2, 4, 3, generator=_gen(11))
    with_teacher = mmel_s_loss(logits, labels, 1.0, 1.0, teacher_probs=teacher)
    fx = torch.softmax(logits[:, 0], -1)[:, None].expand(2, 3, 3)
    div = soft_divergence(logits[:, 1:], replace_mismatched_targets(fx, teacher, labels))
    torch.testing.assert_close(with_teacher.weights, mmel_weights(div, 1.0))


# ---------------------------------------------------------------------------- regression, Sec. 4.2
def test_teacher_replacement_rule_is_strict_and_elementwise():
    student = torch.zeros(1, 5)
    teacher = torch.tensor([[0.25, 0.5, 0.75, -0.75, -0.5]])
    out = teacher_replacement(student, teacher)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.75, -0.75, 0.0]]))
    assert torch.equal(teacher_replacement(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.25, 2.0], [3.0, 1.0]])),
                       torch.tensor([[1.0, 2.0], [3.0, 1.0]]))  # [N, 1] broadcasts over the |B|-1 views
    assert torch.equal(teacher_replacement(student, teacher, threshold=0.2), teacher)


def test_regression_losses():
    preds = torch.tensor([[2.0, 2.25, 3.0, 1.0], [0.0, 0.5, -1.0, 0.25]], requires_grad=True)
    labels = torch.tensor([2.5, 0.0])
    teacher = torch.tensor([[2.0, 4.0, 1.75], [0.75, 0.0, 0.5]])
    out = mmel_s_regression_loss(preds, labels, 1.0, 0.5, teacher_preds=teacher)
    # targets: row 0 f(x)=2.0 -> [2.0, 4.0 (diff 2 > .5), 2.0 (diff .25)]; row 1 f(x)=0 -> [.75, 0, 0]
    targets = torch.tensor([[2.0, 4.0, 2.0], [0.75, 0.0, 0.0]])
    sq = (preds.detach()[:, 1:] - targets) ** 2
    p = torch.softmax(sq, 1)
    bracket = (p * sq).sum(1) - (p * torch.log(3 * p)).sum(1)
    expected = ((preds.detach()[:, 0] - labels) ** 2 + 0.5 * bracket).mean()
    torch.testing.assert_close(out.loss, expected)
    (grad,) = torch.autograd.grad(out.loss, preds)
    torch.testing.assert_close(grad[:, 0], (preds.detach()[:, 0] - labels))  # 2 (f - y) / N, N = 2
    hard = mmel_h_regression_loss(preds, torch.cat([labels[:, None], teacher], 1), 1.0)
    se = (preds.detach() - torch.cat([labels[:, None], teacher], 1)) ** 2
    torch.testing.assert_close(hard.weights, torch.softmax(se, 1))
    torch.testing.assert_close(mmel_h_regression_loss(preds, labels, 2.0).loss,
                               max_expected_loss((preds.detach() - labels[:, None]) ** 2, 2.0).mean())


# -------------------------------------------------------------------------------- helpers, errors
def test_view_logits_keeps_groups():
    model = torch.nn.Linear(6, 3)
    views = torch.randn(4, 5, 6, generator=_gen(12))
    out = view_logits(model, views)
    assert out.shape == (4, 5, 3)
    torch.testing.assert_close(out[2, 3], model(views[2, 3]))


@pytest.mark.parametrize("call, match", [
    (lambda: mmel_weights(torch.zeros(3, 1), 1.0), r"\|B\| >= 2"),
    (lambda: mmel_h_loss(torch.zeros(3, 1, 4), torch.zeros(3, dtype=torch.long)), r"logits.*\|B\| >= 2"),
    (lambda: mmel_s_loss(torch.zeros(3, 1, 4), torch.zeros(3, dtype=torch.long)), r"\|B\| >= 2"),
    (lambda: mmel_weights(torch.zeros(3, 2), 0.0), "lambda_p"),
    (lambda: mmel_weights(torch.zeros(3, 2), -1.0), "lambda_p"),
    (lambda: mmel_weights(torch.zeros(3, 2), float("nan")), "lambda_p"),
    (lambda: mmel_h_loss(torch.zeros(3, 2, 4), torch.zeros(3, dtype=torch.long), True), "lambda_p"),
    (lambda: mmel_s_loss(torch.zeros(3, 2, 4), torch.zeros(3, dtype=torch.long), 1.0, -0.5), "lambda_t"),
    (lambda: mmel_s_regression_loss(torch.zeros(3, 3), torch.zeros(3), 1.0, -1.0), "lambda_t"),
    (lambda: mmel_weights(torch.zeros(6), 1.0), r"losses must be a float tensor \[N, \|B\|\]"),
    (lambda: mmel_weights(torch.zeros(0, 3), 1.0), "empty"),
    (lambda: mmel_h_loss(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)), "logits"),
    (lambda: mmel_h_loss(torch.zeros(3, 2, 4), torch.zeros(2, dtype=torch.long)), "labels"),
    (lambda: mmel_h_loss(torch.zeros(3, 2, 4), torch.zeros(3, 3, 4)), "labels"),
    (lambda: mmel_s_loss(torch.zeros(3, 2, 4), torch.zeros(3)), "labels"),
    (lambda: mmel_s_loss(torch.zeros(3, 3, 4), torch.zeros(3, dtype=torch.long), teacher_probs=torch.zeros(3, 3, 4)),
     "teacher_probs"),
    (lambda: mmel_s_regression_loss(torch.zeros(3, 3), torch.zeros(3), teacher_preds=torch.zeros(3, 3)),
     "teacher_preds"),
    (lambda: mmel_h_regression_loss(torch.zeros(3, 3), torch.zeros(3, 2)), "targets"),
    (lambda: mmel_h_regression_loss(torch.zeros(3), torch.zeros(3)), "preds"),
    (lambda: inner_objective(torch.zeros(3, 3), torch.zeros(3, 2), 1.0), "weights"),
    (lambda: teacher_replacement(torch.zeros(3), torch.zeros(3), -0.1), "threshold"),
    (lambda: teacher_replacement(torch.zeros(3), torch.zeros(4)), "teacher_pred"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
