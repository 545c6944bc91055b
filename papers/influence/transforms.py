"""The differentiable transformation models of Sec. 4 and Appendix A, and how they are learned (Sec. 4.3).

G maps tau (128-d) to per-pixel maps: spatial s_w (4), s_b (2) (Sec. 4.1) and appearance c_w (C*C),
c_b (C) (Sec. 4.2); MNIST 4 + 2 + 1 + 1 = 8 channels, CIFAR-10 4 + 2 + 9 + 3 = 18 (Appendix A). All maps
are smoothed by average pooling. The flow field is Eq. 20, s(p) = S_w(p) p + s_b(p) + p, on grid_sample's
normalised coordinates p in [-1, 1]^2 (x = column, y = row; Eq. 20 writes (i, j), the same map with the
axes relabelled), and x is warped by differentiable bilinear interpolation (`warp`). The appearance model is
x~ = x + dx, dx = c_w x + c_b, a per-pixel 1x1 filter (C -> C) with bias. Spatial first, then appearance
(Appendix C, Figure 4's row order). Images are floats in [0, 1], [N, C, H, W]; x~ is not clamped (a clamp
would cut gradients at the range ends).

Learning (Sec. 4.3), `fit_generator`: WGAN-GP (Gulrajani et al.) with two critics, one on images (x~ vs real
x) and one on the flow displacement s - p (G's vs random affine flows, `random_affine_flow`), plus an
anti-identity term anti_identity_weight * (1 / (MSE(s - p, 0) + eps) + 1 / (MSE(x~, x) + eps)) on G
(the paper's "inverse of the mean-square error on the flow field space and image space"). G is then fixed.
Then E (`Encoder`, x -> tau, Tanh) is trained per run to *minimise* the mean I_aug of its samples through
fixed F and G with the last-layer influence (Sec. 3.4; `encoder_loss`): by Eq. 15,
-I_aug / N ~ L_val(theta_hat) - L_val(theta_hat with z_i replaced by z~_i), so a lower I_aug means a lower
validation loss. Sec. 4.3 says E "maximizes the influence function"; that contradicts Eq. 15 (and the goal,
Eq. 4), so we follow the equations.

Choices the paper leaves open (README repeats them; every one is a params.yaml key of the `transform` block):
* tau prior for GAN training: Uniform[-1, 1]^128 (the range of E's Tanh output, so E searches where G learned).
* gradient-penalty weight 10 and 5 critic steps per G step (the WGAN-GP reference values), Adam 1e-4,
  betas (0.5, 0.9), batch 128 (Appendix B).
* smoothing: average pooling, stride 1, kernel `pool_kernel` (odd; 7 for 28x28 / 32x32), padding
  kernel // 2, count_include_pad=False (border pixels average over the image only).
* random affine flows for the flow critic: per image rotation U(-15, 15) degrees, scale per axis
  U(0.9, 1.1), shear U(-0.2, 0.2), translation U(-0.1, 0.1) (normalised units: +-1.4 px on MNIST).
* anti-identity weight 0.01, eps 1e-3 (keeps the term bounded at the identity, where it would be infinite).
* warp outside the image: zeros (MNIST background; CIFAR padding like its zero-padded random crops).
* Appendix A's last transposed conv (4x4, stride 1) cannot keep 28x28 with symmetric padding: padding 1
  gives 29x29 and we drop the last row and column; the Linear after tau has no activation (as listed);
  the final layer's initial weights are scaled by 0.1 so G starts near the identity. Appendix A.2 lists
  CIFAR's first conv as 1 -> 16 and its critic input as 28x28x1 (copied from A.1): we use 3 channels, 32x32.
  The convs listed as 4x4 stride 1 use 'same' padding; stride 2 ones padding 1 (28 -> 14 -> 7).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TAU_DIM = 128
CL = torch.channels_last                   # conv memory format: measured 2-4x faster on CPU here (transposed convs)
SPATIAL_CHANNELS = 6                       # s_w (4) + s_b (2), Sec. 4.1


def appearance_channels(channels: int) -> int:
    """c_w (C*C, a 1x1 filter C -> C) + c_b (C): 2 for grey images, 12 for RGB (Sec. 4.2)."""
    return channels * channels + channels


# ------------------------------------------------------------------------------------ the operators
def identity_grid(n: int, h: int, w: int, like: Tensor) -> Tensor:
    """Pixel-centre coordinates p [n, H, W, 2] ((x, y) in [-1, 1], align_corners=False)."""
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)


def smooth(maps: Tensor, kernel: int) -> Tensor:
    """Average pooling (stride 1, same size) of per-pixel maps [N, K, H, W]; kernel 1 = none."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pool_kernel: expected an odd number >= 1, got {kernel}")
    if kernel == 1:
        return maps
    # separable: the valid part of a window is a product of a row and a column range, so the 2-D mean over
    # it (count_include_pad=False) is the row mean of column means; each 1-D box mean is a difference of
    # cumulative sums (measured ~10x faster on CPU than avg_pool2d with this kernel)
    return _box_mean(_box_mean(maps, kernel, -2), kernel, -1)


def _box_mean(t: Tensor, kernel: int, dim: int) -> Tensor:
    pad, n = kernel // 2, t.shape[dim]
    shape = [0, 0] * (-dim - 1) + [pad + 1, pad]                     # F.pad order: last dim first
    cs = F.pad(t, shape).cumsum(dim)
    sums = cs.narrow(dim, kernel, n) - cs.narrow(dim, 0, n)
    idx = torch.arange(n, device=t.device)
    counts = (torch.clamp(idx + pad, max=n - 1) - torch.clamp(idx - pad, min=0) + 1).to(t.dtype)
    return sums / counts.view(-1, *([1] * (-dim - 1)))


def flow_field(s_w: Tensor, s_b: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 20: (s [N, H, W, 2], displacement s - p [N, 2, H, W]) from s_w [N, 4, H, W], s_b [N, 2, H, W]."""
    n, _, h, w = s_w.shape
    p = identity_grid(n, h, w, s_w).permute(0, 3, 1, 2)               # [N, 2, H, W]
    a = s_w.view(n, 2, 2, h, w)
    disp = (a * p[:, None]).sum(dim=2) + s_b                           # S_w(p) p + s_b(p)
    return (p + disp).permute(0, 2, 3, 1), disp


def warp(x: Tensor, grid: Tensor) -> Tensor:
    """x sampled at `grid` [N, H, W, 2] by bilinear interpolation (differentiable in x and grid)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def appearance(x: Tensor, c_w: Tensor, c_b: Tensor) -> Tensor:
    """x + dx, dx[o] = sum_i c_w[o, i] x[i] + c_b[o] per pixel (Sec. 4.2); c_w [N, C*C, H, W], c_b [N, C, H, W]."""
    n, c, h, w = x.shape
    dx = (c_w.view(n, c, c, h, w) * x[:, None]).sum(dim=2) + c_b
    return x + dx


@dataclass
class Transformed:
    """x~ and what made it: the spatially warped image, the displacement s - p and the smoothed maps."""
    x: Tensor
    warped: Tensor
    displacement: Tensor
    maps: Tensor


def transform(x: Tensor, maps: Tensor, pool_kernel: int) -> Transformed:
    """Apply raw generator maps [N, 6 + C*C + C, H, W] to x [N, C, H, W]: smooth, warp (Eq. 20), appearance."""
    c = x.shape[1]
    maps = smooth(maps, pool_kernel)
    s_w, s_b = maps[:, :4], maps[:, 4:6]
    c_w, c_b = maps[:, 6:6 + c * c], maps[:, 6 + c * c:]
    grid, disp = flow_field(s_w, s_b)
    warped = warp(x, grid)
    return Transformed(appearance(warped, c_w, c_b), warped, disp, maps)


# ------------------------------------------------------------------------------------------ networks
@dataclass(frozen=True)
class Arch:
    """Appendix A per data set: image size, channels, conv widths (E, D: up; G: down), G's base grid."""
    size: int
    channels: int
    widths: tuple[int, ...]

    @property
    def base(self) -> int:
        return self.size // 2 ** (len(self.widths) - 1)


ARCHS = {"mnist": Arch(28, 1, (16, 32, 64)), "cifar10": Arch(32, 3, (16, 32, 64, 128))}


def _downsampler(arch: Arch, in_channels: int, act: nn.Module) -> nn.Sequential:
    layers, c = [], in_channels
    for k, width in enumerate(arch.widths):
        if k == 0:                      # 4x4 stride 1, 'same' size: pad 1 before, 2 after
            layers += [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(c, width, 4, stride=1), act]
        else:
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), act]
        c = width
    return nn.Sequential(*layers, nn.Flatten())


class Encoder(nn.Module):
    """E: x -> tau in (-1, 1)^128 (Appendix A: convs with ReLU, Linear, Tanh)."""

    def __init__(self, arch: Arch, tau_dim: int = TAU_DIM):
        super().__init__()
        self.body = _downsampler(arch, arch.channels, nn.ReLU())
        self.out = nn.Linear(arch.widths[-1] * arch.base ** 2, tau_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.out(self.body(x.contiguous(memory_format=CL))))


class Critic(nn.Module):
    """D: convs with LeakyReLU 0.2, Linear -> 1 (Appendix A); `in_channels` 2 for the flow critic."""

    def __init__(self, arch: Arch, in_channels: int):
        super().__init__()
        self.body = _downsampler(arch, in_channels, nn.LeakyReLU(0.2))
        self.out = nn.Linear(arch.widths[-1] * arch.base ** 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x.contiguous(memory_format=CL))).squeeze(1)


class Generator(nn.Module):
    """G: tau -> raw maps (Appendix A: Linear, reshape, transposed convs, identity output); `forward(x, tau)`
    returns the `Transformed` sample."""

    def __init__(self, arch: Arch, pool_kernel: int, tau_dim: int = TAU_DIM):
        super().__init__()
        self.arch, self.pool_kernel = arch, int(pool_kernel)
        smooth(torch.zeros(1, 1, 1, 1), self.pool_kernel)                  # validates the kernel
        widths = arch.widths[::-1]
        self.inp = nn.Linear(tau_dim, widths[0] * arch.base ** 2)
        ups = []
        for a, b in itertools.pairwise(widths):
            ups += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.ups = nn.Sequential(*ups)
        self.last = nn.ConvTranspose2d(widths[-1], SPATIAL_CHANNELS + appearance_channels(arch.channels), 4, 1, 1)
        with torch.no_grad():
            self.last.weight.mul_(0.1)
            self.last.bias.zero_()

    def maps(self, tau: Tensor) -> Tensor:
        a = self.arch
        h = self.inp(tau).view(len(tau), a.widths[-1], a.base, a.base).contiguous(memory_format=CL)
        return self.last(self.ups(h))[..., :a.size, :a.size].contiguous()

    def forward(self, x: Tensor, tau: Tensor) -> Transformed:
        return transform(x, self.maps(tau), self.pool_kernel)


# -------------------------------------------------------------------------------------- GAN training
def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP: mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2, x_hat on random segments real-fake."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclass(frozen=True)
class AffineRanges:
    rotation_deg: float = 15.0
    scale: float = 0.1
    shear: float = 0.2
    translation: float = 0.1


def random_affine_flow(n: int, size: int, ranges: AffineRanges, generator: torch.Generator) -> Tensor:
    """Displacement fields [n, 2, H, W] of random affine maps p -> A p + t (the flow critic's 'real' flows)."""
    def u(bound, *shape):
        return (torch.rand(n, *shape, generator=generator) * 2 - 1) * bound
    rot = u(math.radians(ranges.rotation_deg))
    scale = 1 + u(ranges.scale, 2)
    shear = u(ranges.shear)
    cos, sin = torch.cos(rot), torch.sin(rot)
    r = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)          # [n, 2, 2]
    sh = torch.eye(2).repeat(n, 1, 1)
    sh[:, 0, 1] = shear
    a = r @ sh @ torch.diag_embed(scale) - torch.eye(2)
    p = identity_grid(n, size, size, torch.zeros(())).reshape(n, -1, 2)
    disp = p @ a.transpose(1, 2) + u(ranges.translation, 2)[:, None]
    return disp.view(n, size, size, 2).permute(0, 3, 1, 2).contiguous()


def sample_tau(n: int, generator: torch.Generator, dim: int = TAU_DIM) -> Tensor:
    return torch.rand(n, dim, generator=generator) * 2 - 1


def anti_identity(out: Transformed, x: Tensor, eps: float) -> Tensor:
    """1 / (MSE(s - p, 0) + eps) + 1 / (MSE(x~, x) + eps): large near the identity transformation."""
    return 1 / (out.displacement.pow(2).mean() + eps) + 1 / ((out.x - x).pow(2).mean() + eps)


def fit_generator(images: Tensor, cfg: dict, seed: int, log=None) -> tuple[Generator, dict]:
    """Train G by WGAN-GP on `images` (float [N, C, H, W] in [0, 1]) and return (G in eval mode, history).

    cfg keys: dataset, pool_kernel, steps (G steps), critic_steps, batch_size, lr, betas, gp_weight,
    anti_identity_weight, anti_identity_eps, affine (AffineRanges fields). The global torch RNG is left as it was
    (a run that fits G itself draws the same numbers afterwards as one that loads it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _fit_generator(images, cfg, seed, log)


def _fit_generator(images: Tensor, cfg: dict, seed: int, log=None) -> tuple[Generator, dict]:
    gen = torch.Generator().manual_seed(seed)
    arch = ARCHS[cfg["dataset"]]
    g, d_img, d_flow = Generator(arch, cfg["pool_kernel"]), Critic(arch, arch.channels), Critic(arch, 2)
    adam = {"lr": cfg["lr"], "betas": tuple(cfg["betas"])}
    opt_g = torch.optim.Adam(g.parameters(), **adam)
    opt_d = torch.optim.Adam([*d_img.parameters(), *d_flow.parameters()], **adam)
    ranges = AffineRanges(**cfg["affine"])
    n, bs = len(images), min(cfg["batch_size"], len(images))
    history = []

    def batch():
        return images[torch.randint(0, n, (bs,), generator=gen)]

    for step in range(cfg["steps"]):
        for _ in range(cfg["critic_steps"]):
            x = batch()
            with torch.no_grad():
                fake = g(x, sample_tau(bs, gen))
            real_flow = random_affine_flow(bs, arch.size, ranges, gen)
            w_img = d_img(fake.x).mean() - d_img(x).mean()
            w_flow = d_flow(fake.displacement).mean() - d_flow(real_flow).mean()
            gp = gradient_penalty(d_img, x, fake.x, gen) + gradient_penalty(d_flow, real_flow, fake.displacement, gen)
            opt_d.zero_grad(set_to_none=True)
            (w_img + w_flow + cfg["gp_weight"] * gp).backward()
            opt_d.step()
        x = batch()
        out = g(x, sample_tau(bs, gen))
        anti = anti_identity(out, x, cfg["anti_identity_eps"])
        loss_g = -d_img(out.x).mean() - d_flow(out.displacement).mean() + cfg["anti_identity_weight"] * anti
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if not torch.isfinite(loss_g):
            raise FloatingPointError(f"transformation model: G loss not finite at step {step + 1}")
        if step % max(cfg["steps"] // 10, 1) == 0 or step == cfg["steps"] - 1:
            with torch.no_grad():
                row = {"step": step + 1, "critic_img": -float(w_img), "critic_flow": -float(w_flow),
                       "gp": float(gp), "g_loss": float(loss_g),
                       "disp_rms": float(out.displacement.pow(2).mean().sqrt()),
                       "image_rms_change": float((out.x - x).pow(2).mean().sqrt())}
            history.append(row)
            if log:
                log(row)
    return g.eval().requires_grad_(False), {"history": history}


# --------------------------------------------------------------------------------- encoder objective
def encoder_loss(encoder: Encoder, generator: Generator, features, influence, x: Tensor, y: Tensor,
                 s_val) -> Tensor:
    """Mean I_aug(z, z~ = G(x, E(x)), z^val) over the batch (Eq. 19, last-layer form of Sec. 3.4), to be
    *minimised* (Eq. 15). `features(x)` is fixed F's penultimate layer; `influence` a LastLayerInfluence."""
    x_aug = generator(x, encoder(x)).x
    with torch.no_grad():
        base = features(x)
    # the influence is float64 on the CPU; .cpu() is differentiable (and a no-op on CPU runs)
    return influence.aug_loss(base.cpu(), features(x_aug).cpu(), y.cpu(), s_val).mean()
