"""common.meta.differentiable_step: the lookahead equals the optimizer's real step and is differentiable."""
import copy

import pytest
import torch
from torch import nn

from common.meta.differentiable_step import lookahead_step
from common.meta.lookahead import trainable_params


def trained(opt_cls, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    opt = opt_cls(model.parameters(), **kw)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, x, y


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                        (torch.optim.Adam, dict(lr=0.01, weight_decay=0.01)),
                                        (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.01))])
def test_lookahead_step_equals_the_real_step(opt_cls, kw):
    model, opt, x, y = trained(opt_cls, **kw)
    params = trainable_params(model)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss = nn.functional.cross_entropy(torch.func.functional_call(model, leaves, (x,)), y)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    ahead = lookahead_step(model, opt, params, grads)
    twin, twin_opt = copy.deepcopy(model), opt_cls(copy.deepcopy(model).parameters(), **kw)
    twin_opt = opt_cls(twin.parameters(), **kw)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_opt.zero_grad()
    nn.functional.cross_entropy(twin(x), y).backward()
    twin_opt.step()
    for n, p in twin.named_parameters():
        torch.testing.assert_close(ahead[n], p.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                                        (torch.optim.Adam, dict(lr=0.01))])
def test_gradient_through_the_step_and_a_learned_lr_match_finite_differences(opt_cls, kw):
    """d L_out(theta'(a, lr)) / d(a, lr) for a per-example weight vector a and the step size."""
    model, opt, x, y = trained(opt_cls, **kw)
    params = trainable_params(model)
    dev_x, dev_y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))

    def outer(a, lr):
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        losses = nn.functional.cross_entropy(torch.func.functional_call(model, leaves, (x,)), y, reduction="none")
        grads = dict(zip(leaves, torch.autograd.grad((a * losses).mean(), list(leaves.values()), create_graph=True)))
        ahead = lookahead_step(model, opt, leaves, grads, lr=lr)
        return nn.functional.cross_entropy(torch.func.functional_call(model, ahead, (dev_x,)), dev_y)

    a = torch.rand(8, dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(kw["lr"], dtype=torch.float64, requires_grad=True)
    g_a, g_lr = torch.autograd.grad(outer(a, lr), (a, lr))
    h = 1e-6
    fd_a = torch.stack([(outer(a.detach() + h * e, lr.detach()) - outer(a.detach() - h * e, lr.detach())) / (2 * h)
                        for e in torch.eye(8, dtype=torch.float64)])
    fd_lr = (outer(a.detach(), lr.detach() + h) - outer(a.detach(), lr.detach() - h)) / (2 * h)
    assert g_a.abs().max() > 1e-6
    torch.testing.assert_close(g_a, fd_a.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(g_lr, fd_lr.detach(), rtol=1e-5, atol=1e-9)
