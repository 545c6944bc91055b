"""Transformation models (Sec. 4, Appendix A), their WGAN-GP training pieces and the heuristic baseline."""
import math

import pytest
import torch
from torch import nn

from papers.influence import heuristic
from papers.influence.influence import LastLayerInfluence
from papers.influence.transforms import (
    ARCHS,
    AffineRanges,
    Critic,
    Encoder,
    Generator,
    encoder_loss,
    fit_generator,
    flow_field,
    gradient_penalty,
    identity_grid,
    random_affine_flow,
    transform,
    warp,
)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_zero_flow_is_the_identity_and_gradients_reach_tau(dataset):
    arch = ARCHS[dataset]
    x = torch.rand(3, arch.channels, arch.size, arch.size)
    assert torch.allclose(warp(x, identity_grid(3, arch.size, arch.size, x)), x, atol=1e-6)
    maps = torch.zeros(3, 6 + arch.channels ** 2 + arch.channels, arch.size, arch.size)
    out = transform(x, maps, pool_kernel=7)
    assert torch.allclose(out.x, x, atol=1e-6) and out.displacement.abs().max() == 0
    g = Generator(arch, pool_kernel=7)
    assert g.maps(torch.zeros(1, 128)).shape[1] == {"mnist": 8, "cifar10": 18}[dataset]   # Appendix A
    tau = (torch.rand(3, 128) * 2 - 1).requires_grad_(True)
    g(x, tau).x.square().sum().backward()
    assert tau.grad is not None and tau.grad.abs().sum() > 0 and torch.isfinite(tau.grad).all()


def test_eq20_with_constant_maps_is_an_affine_map():
    a = torch.tensor([[0.1, -0.2], [0.05, 0.0]])            # S_w (x, y order), a constant field
    t = torch.tensor([0.03, -0.04])
    s_w = a.reshape(1, 4, 1, 1).expand(1, 4, 5, 6)
    s_b = t.view(1, 2, 1, 1).expand(1, 2, 5, 6)
    grid, disp = flow_field(s_w, s_b)
    p = identity_grid(1, 5, 6, s_w)
    assert torch.allclose(grid, p @ (torch.eye(2) + a).T + t, atol=1e-6)
    assert torch.allclose(disp.permute(0, 2, 3, 1), grid - p, atol=1e-7)


def test_wgan_gp_penalty_of_a_linear_critic_is_norm_minus_one_squared():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    w = critic[1].weight.detach()
    expected = (w.norm() - 1) ** 2                          # grad_x (w.x + b) = w everywhere
    assert torch.allclose(gradient_penalty(critic, real, fake), expected, atol=1e-6)
    with torch.no_grad():
        critic[1].weight.div_(critic[1].weight.norm())      # unit-norm w: no penalty
    assert gradient_penalty(critic, real, fake).abs() < 1e-10


def test_random_affine_flows_are_affine_and_zero_ranges_give_zero():
    gen = torch.Generator().manual_seed(0)
    zero = random_affine_flow(4, 28, AffineRanges(0.0, 0.0, 0.0, 0.0), gen)
    assert zero.abs().max() < 1e-6
    flow = random_affine_flow(4, 28, AffineRanges(), gen)
    # affine: the second difference along both axes vanishes
    assert flow[..., 2:, :].sub(2 * flow[..., 1:-1, :]).add(flow[..., :-2, :]).abs().max() < 1e-5
    assert 0.01 < flow.abs().mean() < 0.3


def test_gan_training_runs_and_fixes_g():
    cfg = {"dataset": "mnist", "pool_kernel": 7, "steps": 2, "critic_steps": 2, "batch_size": 8, "lr": 1e-4,
           "betas": [0.5, 0.9], "gp_weight": 10.0, "anti_identity_weight": 0.01, "anti_identity_eps": 1e-3,
           "affine": {"rotation_deg": 15.0, "scale": 0.1, "shear": 0.2, "translation": 0.1}}
    g, info = fit_generator(torch.rand(16, 1, 28, 28), cfg, seed=0)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    assert info["history"][-1]["step"] == 2 and all(math.isfinite(v) for v in info["history"][-1].values())


def test_encoder_learns_to_lower_aug_influence_through_fixed_f_and_g():
    torch.manual_seed(0)
    arch = ARCHS["mnist"]
    body = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.Tanh())
    head = nn.Linear(8, 3)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 3, (32,))
    g = Generator(arch, 7).requires_grad_(False)
    with torch.no_grad():
        g.last.weight.mul_(20)                              # visible transformations
    inf = LastLayerInfluence(head.weight, head.bias, body(x).detach(), damping=0.1)
    s_val = inf.s_val(body(x[:16]).detach(), y[:16])
    enc = Encoder(arch)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = encoder_loss(enc, g, body, inf, x, y, s_val)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in g.parameters())      # G stays fixed


@pytest.mark.parametrize("name", sorted(heuristic.OPS))
def test_every_heuristic_op_is_batched_and_finite(name):
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(6, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0
    out = heuristic.OPS[name](x, gen)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x)
    if name == "erode":
        assert (out <= x).all()
    if name == "dilate":
        assert (out >= x).all()


def test_heuristic_compositions_and_crop_flip():
    x = torch.rand(10, 3, 32, 32)
    a = heuristic.compose(x, ["rotate", "zoom", "brightness"], 2, torch.Generator().manual_seed(3))
    b = heuristic.compose(x, ["rotate", "zoom", "brightness"], 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    assert torch.equal(heuristic.crop_flip(x, 0, False, torch.Generator()), x)
    cropped = heuristic.crop_flip(x, 4, True, torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
    with pytest.raises(ValueError, match="heuristic_ops: unknown"):
        heuristic.compose(x, ["rotate", "solarize"], 1, torch.Generator())
    with pytest.raises(ValueError, match="pool_kernel: expected an odd number"):
        Generator(ARCHS["mnist"], pool_kernel=4)


def test_critic_and_encoder_shapes_follow_appendix_a():
    for ds, n_conv in (("mnist", 3), ("cifar10", 4)):
        arch = ARCHS[ds]
        x = torch.rand(2, arch.channels, arch.size, arch.size)
        assert Encoder(arch)(x).shape == (2, 128) and Encoder(arch)(x).abs().max() < 1
        assert Critic(arch, arch.channels)(x).shape == (2,)
        assert sum(isinstance(m, nn.Conv2d) for m in Encoder(arch).modules()) == n_conv


def test_separable_smoothing_equals_2d_average_pooling():
    from papers.influence.transforms import smooth
    m = torch.randn(2, 8, 28, 28, dtype=torch.float64)
    ref = torch.nn.functional.avg_pool2d(m, 7, stride=1, padding=3, count_include_pad=False)
    assert torch.allclose(smooth(m, 7), ref, atol=1e-12)
    assert torch.equal(smooth(m, 1), m)
