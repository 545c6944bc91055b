"""The `heuristic` baseline: random compositions of predefined transformations, as batched tensor ops.

Sec. 5.2: "Heur is the standard heuristic approach of applying random compositions of the given set of
transformation operations" of Ratner et al. (2017). Their MNIST set (TANDA code): rotations of 2.5, 5 and
10 degrees, zoom 0.9 / 1.1, shear 0.1-0.4, swirl, elastic deformation, erosion / dilation. Each image gets
`length` ops drawn uniformly with replacement (one draw per image and position) and applied in order;
every op works on a whole sub-batch at once (affine grids and grid_sample, max-pooling morphology).

Choices where the list is not specific (README repeats them):
* rotation: angle uniformly from {+-2.5, +-5, +-10} degrees; zoom from {0.9, 1.1}; shear (x-shear) from
  {+-0.1, +-0.2, +-0.3, +-0.4}.
* swirl: rotation by strength * exp(-rho / radius) about the centre, strength from {+-0.5, +-1.0} radians,
  radius = half the image width.
* elastic: Simard et al. (2003) with alpha = 34 px and sigma = 4 px (their MNIST values; Gaussian-smoothed
  uniform displacements, scaled to the image size for other sizes).
* erosion / dilation: grey-level min / max over a 3x3 cross (the pixel and its 4 neighbours), so thin MNIST
  strokes survive erosion.
* CIFAR-10 (Ratner et al.'s CIFAR set is not listed in the issue): the geometric ops above plus brightness
  (+U(-0.2, 0.2)) and contrast (x U(0.7, 1.3) about the image mean); crop and flip are separate options.
* composition length 2 (params `heuristic_length`).
Random crop (zero padding `pad`, per-image offsets) and horizontal flip live here too (`crop_flip`).
Random draws come from a CPU generator (reproducible on any device) and are moved to the images' device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from papers.influence.transforms import identity_grid, warp

ROTATIONS_DEG = (2.5, 5.0, 10.0)
ZOOMS = (0.9, 1.1)
SHEARS = (0.1, 0.2, 0.3, 0.4)
SWIRL_STRENGTHS = (0.5, 1.0)
ELASTIC_ALPHA_PX, ELASTIC_SIGMA_PX = 34.0, 4.0


def _choice(values, n: int, gen: torch.Generator, signed: bool = True) -> Tensor:
    v = torch.tensor(values, dtype=torch.float32)[torch.randint(0, len(values), (n,), generator=gen)]
    if signed:
        v = v * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
    return v


def _affine(x: Tensor, a: Tensor) -> Tensor:
    """Sample x at A p (A [n, 2, 2], output -> input coordinates)."""
    theta = torch.cat([a, torch.zeros(len(a), 2, 1)], dim=2).to(x)
    return warp(x, F.affine_grid(theta, list(x.shape), align_corners=False))


def rotate(x: Tensor, gen: torch.Generator) -> Tensor:
    t = torch.deg2rad(_choice(ROTATIONS_DEG, len(x), gen))
    c, s = torch.cos(t), torch.sin(t)
    return _affine(x, torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2))


def zoom(x: Tensor, gen: torch.Generator) -> Tensor:
    z = _choice(ZOOMS, len(x), gen, signed=False)
    return _affine(x, torch.diag_embed(torch.stack([1 / z, 1 / z], -1)))


def shear(x: Tensor, gen: torch.Generator) -> Tensor:
    a = torch.eye(2).repeat(len(x), 1, 1)
    a[:, 0, 1] = _choice(SHEARS, len(x), gen)
    return _affine(x, a)


def swirl(x: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    p = identity_grid(n, h, w, x)
    strength = _choice(SWIRL_STRENGTHS, n, gen).to(x)[:, None, None]
    rho = p.norm(dim=-1)                                    # radius 1 = half the width
    ang = strength * torch.exp(-rho / 1.0)
    c, s = torch.cos(ang), torch.sin(ang)
    grid = torch.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], dim=-1)
    return warp(x, grid)


def _gaussian_blur(t: Tensor, sigma: float) -> Tensor:
    radius = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=t.dtype) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = t.shape[1]
    t = F.conv2d(F.pad(t, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(t, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def elastic(x: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    scale = h / 28.0
    field = (torch.rand(n, 2, h, w, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device)
    disp_px = _gaussian_blur(field, ELASTIC_SIGMA_PX * scale) * ELASTIC_ALPHA_PX * scale
    disp = disp_px * torch.tensor([2 / w, 2 / h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1)
    return warp(x, identity_grid(n, h, w, x) + disp.permute(0, 2, 3, 1))


def _cross(x: Tensor, reduce) -> Tensor:
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    shifted = [pad[..., 1:h + 1, 1:w + 1], pad[..., :h, 1:w + 1], pad[..., 2:, 1:w + 1],
               pad[..., 1:h + 1, :w], pad[..., 1:h + 1, 2:]]
    return reduce(torch.stack(shifted), dim=0).values


def erode(x: Tensor, gen: torch.Generator) -> Tensor:
    return _cross(x, torch.min)


def dilate(x: Tensor, gen: torch.Generator) -> Tensor:
    return _cross(x, torch.max)


def brightness(x: Tensor, gen: torch.Generator) -> Tensor:
    return x + (torch.rand(len(x), 1, 1, 1, generator=gen, dtype=x.dtype) * 0.4 - 0.2).to(x.device)


def contrast(x: Tensor, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (0.7 + 0.6 * torch.rand(len(x), 1, 1, 1, generator=gen, dtype=x.dtype)).to(x.device)


OPS = {"rotate": rotate, "zoom": zoom, "shear": shear, "swirl": swirl, "elastic": elastic,
       "erode": erode, "dilate": dilate, "brightness": brightness, "contrast": contrast}


def compose(x: Tensor, ops: list[str], length: int, gen: torch.Generator) -> Tensor:
    """Each image through `length` ops drawn uniformly (with replacement) from `ops`, in order."""
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ValueError(f"heuristic_ops: unknown {unknown or ops!r}; expected a non-empty subset of {sorted(OPS)}")
    out = x.clone()
    for _ in range(length):
        pick = torch.randint(0, len(ops), (len(x),), generator=gen)
        for k, name in enumerate(ops):
            mask = (pick == k).to(out.device)
            if mask.any():
                out[mask] = OPS[name](out[mask], gen)
    return out


def crop_flip(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Random crop with `pad` zero pixels per side (per-image offsets) and, if `flip`, random horizontal flips."""
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None].to(x.device)
        cols = (ox[:, None] + torch.arange(w))[:, None, :].to(x.device)
        x = xp.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        m = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
