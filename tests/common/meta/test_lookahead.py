"""The batched meta-gradient equals finite differences and the official per-example loop."""
import copy

import pytest
import torch
from torch import nn

from common.meta.lookahead import (
    AdamHyper,
    SGDHyper,
    adam_meta_gradient,
    adam_optimizer_state,
    lookahead_meta_gradient,
    model_buffers,
    per_example_losses,
    reference_meta_gradient,
    sgd_meta_gradient,
    sgd_optimizer_state,
    trainable_params,
)


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.fixture
def problem():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    dev_x, dev_y = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    return x, y, dev_x, dev_y


def trained(opt_cls, x, y, **kw):
    torch.manual_seed(1)
    model = tiny_model().double()
    opt = opt_cls(model.parameters(), **kw)
    for _ in range(3):  # non-trivial optimizer state (momentum / moments, step count)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, opt


def lookahead_dev_loss(model, opt, x, y, dev_x, dev_y, w):
    """L_dev(theta + sum_i w_i Delta_i) with Delta_i from real optimizer steps (for finite differences)."""
    params = trainable_params(model)
    total = {n: p.clone() for n, p in params.items()}
    for i in range(len(x)):
        twin = copy.deepcopy(model)
        twin_opt = type(opt)(twin.parameters(), lr=opt.defaults["lr"])
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin_opt.zero_grad()
        nn.functional.cross_entropy(twin(x[i:i + 1]), y[i:i + 1]).backward()
        twin_opt.step()
        for n, p in twin.named_parameters():
            total[n] += w[i] * (p.detach() - params[n])
    return per_example_losses(model, total, model_buffers(model), dev_x, dev_y).mean()


@pytest.mark.parametrize("opt_cls,kw", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (torch.optim.Adam, dict(lr=0.01, weight_decay=0.01)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.01)),
])
@pytest.mark.parametrize("zero_w", [False, True])
def test_meta_gradient_matches_finite_differences(problem, opt_cls, kw, zero_w):
    x, y, dev_x, dev_y = problem
    model, opt = trained(opt_cls, x, y, **kw)
    w = torch.zeros(6, dtype=torch.float64) if zero_w else torch.rand(6, dtype=torch.float64)
    got = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    h = 1e-6
    fd = torch.stack([(lookahead_dev_loss(model, opt, x, y, dev_x, dev_y, w + h * e)
                       - lookahead_dev_loss(model, opt, x, y, dev_x, dev_y, w - h * e)) / (2 * h)
                      for e in torch.eye(6, dtype=torch.float64)])
    assert got.abs().max() > 1e-6  # a non-trivial gradient
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("opt_cls,kw", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.01)),
])
def test_batched_equals_per_example_loop_float32(opt_cls, kw):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    dev_x, dev_y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    model = tiny_model()
    opt = opt_cls(model.parameters(), **kw)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    w = torch.rand(8)
    state_before = {k: v.clone() for k, v in opt.state[next(iter(model.parameters()))].items()
                    if torch.is_tensor(v)}
    ref = reference_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    got = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # the reference loop must not touch the live optimizer state
    for k, v in opt.state[next(iter(model.parameters()))].items():
        if torch.is_tensor(v):
            torch.testing.assert_close(v, state_before[k])


def test_sgd_without_state_has_no_momentum_term(problem):
    x, y, dev_x, dev_y = problem
    torch.manual_seed(2)
    model = tiny_model().double().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    w = torch.rand(6, dtype=torch.float64)
    ref = reference_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    got = sgd_meta_gradient(model, trainable_params(model), model_buffers(model), x, y, dev_x, dev_y, w,
                            sgd_optimizer_state(opt, model), SGDHyper(0.1, 0.9, 0.0))
    torch.testing.assert_close(got, ref)


def test_adam_bias_correction_flag_changes_deltas(problem):
    x, y, dev_x, dev_y = problem
    model, opt = trained(torch.optim.Adam, x, y, lr=0.01)
    w = torch.rand(6, dtype=torch.float64)
    state = adam_optimizer_state(opt, model)
    args = (model, trainable_params(model), model_buffers(model), x, y, dev_x, dev_y, w, state)
    with_bc = adam_meta_gradient(*args, AdamHyper(0.01))
    without_bc = adam_meta_gradient(*args, AdamHyper(0.01, bias_correction=False))
    torch.testing.assert_close(with_bc, lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w))
    assert not torch.allclose(with_bc, without_bc)


def test_unsupported_optimizer_is_a_clear_error(problem):
    x, y, dev_x, dev_y = problem
    model = tiny_model().double()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="RMSprop"):
        lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_parameter_groups_with_different_weight_decay(problem, opt_cls):
    """e.g. BERT fine-tuning: no decay on biases/LayerNorm, 0.01 elsewhere."""
    x, y, dev_x, dev_y = problem
    torch.manual_seed(3)
    model = tiny_model().double()
    decayed = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    extra = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls([{"params": decayed, "weight_decay": 0.05}, {"params": plain, "weight_decay": 0.0}], lr=0.05,
                  **extra)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    w = torch.rand(6, dtype=torch.float64)
    torch.testing.assert_close(lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w),
                               reference_meta_gradient(model, opt, x, y, dev_x, dev_y, w))
    opt.param_groups[1]["lr"] = 0.1
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)


def test_fused_adam_deltas_equal_the_eager_ones():
    """The compiled one-pass kernel (used for BERT-sized tensors) gives the eager deltas."""
    from common.meta.lookahead import AdamHyper, adam_deltas

    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(7, 5, generator=g), "b": torch.randn(5, generator=g)}
    grads = {n: torch.randn(4, *p.shape, generator=g) * 1e-2 for n, p in params.items()}
    m = {n: torch.randn(p.shape, generator=g) * 1e-3 for n, p in params.items()}
    v = {n: torch.rand(p.shape, generator=g) * 1e-5 for n, p in params.items()}
    v["b"][0] = 0.0
    for hp in (AdamHyper(1e-3, weight_decay={"w": 0.01}), AdamHyper(1e-3, weight_decay=0.1, decoupled=True)):
        eager = adam_deltas(params, grads, m, v, 3, hp, fused=False)
        fused = adam_deltas(params, grads, m, v, 3, hp, fused=True)
        for n in params:
            torch.testing.assert_close(fused[n], eager[n], rtol=1e-5, atol=1e-9)


def test_loss_function_is_a_parameter_soft_labels_included(problem):
    """A paper may pass its own per-example loss: one-hot soft targets give the hard-label gradient,
    and a different loss (here squared error on probabilities) gives a different one."""
    x, y, dev_x, dev_y = problem
    model, opt = trained(torch.optim.SGD, x, y, lr=0.1, momentum=0.9, weight_decay=0.01)
    w = torch.rand(6, dtype=torch.float64)
    hard = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    one_hot = lambda t: nn.functional.one_hot(t, 3).double()
    soft = lookahead_meta_gradient(model, opt, x, one_hot(y), dev_x, one_hot(dev_y), w)
    torch.testing.assert_close(soft, hard)
    brier = lambda logits, t: ((logits.softmax(-1) - t) ** 2).sum(-1)
    other = lookahead_meta_gradient(model, opt, x, one_hot(y), dev_x, one_hot(dev_y), w, loss_fn=brier)
    assert (other - hard).abs().max() > 1e-4
