"""|B| random-crop + horizontal-flip views per image, for a whole batch at once (no per-image loop).

The standard CIFAR augmentation (Krizhevsky et al. 2012; He et al. 2016 Sec. 4.2; MMEL Sec. 4.1):
pad every side with `padding` zero pixels, take an H x W crop at a uniformly random offset
(dy, dx) in {0, ..., 2 * padding}^2, and mirror it left-right with probability 1/2. Equal in
distribution to torchvision's RandomCrop(H, padding=4) followed by RandomHorizontalFlip().

How it is computed: the batch is zero-padded once and stacked with its mirror image into one
tensor [2, N, C, H+2p, W+2p]; a strided window view of it exposes every possible crop row as a
length-W slice, and one advanced-indexing call (flip, example, channel, row, column offset) copies
all N * |B| crops. A crop of the mirrored padded image at column offset 2p - dx is exactly the
mirror of the crop at dx, so flips cost no second pass.

Choices the MMEL paper leaves open:

* Views of one example are sampled independently (with replacement), so two views can coincide
  (probability 1/162 per pair for padding 4), as when the usual transform runs |B| times.
* `include_original=True` makes view 0 the unaugmented image (offset (p, p), no flip): MMEL assumes
  x_i in B(x_i) (Sec. 3.1) and its soft loss (Eq. 8) needs x_i itself; the other views are random.
* Padding is with 0 in whatever space the input is: pass raw pixels (uint8 or unnormalised float)
  for torchvision's black border; after per-channel normalisation a 0 border is the mean colour.
* Randomness comes only from `generator` (CPU torch.Generator; the global RNG if None), drawn in a
  fixed order (offsets, then flips), so a seed fixes every view. Fresh views per call: whether a run
  draws them once (MMEL Algorithm 1, lines 1-3) or every epoch is the caller's choice.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR_PADDING = 4


class ViewParams(NamedTuple):
    """Per-(example, view) crop offsets into the padded image and flip flags, each [N, |B|]."""

    dy: Tensor
    dx: Tensor
    flip: Tensor


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def sample_view_params(num_images: int, num_views: int, generator: torch.Generator | None = None, *,
                       padding: int = CIFAR_PADDING, flip: bool = True, include_original: bool = True) -> ViewParams:
    """Offsets uniform on {0..2p}, flips Bernoulli(1/2) (none if `flip` is False); view 0 is the
    identity (dy = dx = p, no flip) when `include_original`."""
    _check_int("num_images", num_images, 0)
    _check_int("num_views", num_views, 1)
    _check_int("padding", padding, 0)
    offsets = torch.randint(0, 2 * padding + 1, (2, num_images, num_views), generator=generator)
    if flip:
        flips = torch.randint(0, 2, (num_images, num_views), generator=generator).bool()
    else:
        flips = torch.zeros(num_images, num_views, dtype=torch.bool)
    if include_original:
        offsets[:, :, 0] = padding
        flips[:, 0] = False
    return ViewParams(offsets[0], offsets[1], flips)


def apply_views(images: Tensor, params: ViewParams, padding: int = CIFAR_PADDING) -> Tensor:
    """The views [N, |B|, C, H, W] of `images` [N, C, H, W] (any dtype, kept) for `params`."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W], got {got}")
    _check_int("padding", padding, 0)
    n, c, h, w = images.shape
    if params.dy.dim() != 2 or params.dy.shape[0] != n or not (params.dy.shape == params.dx.shape == params.flip.shape):
        raise ValueError(f"params must be [N, |B|] with N = {n}, got dy {tuple(params.dy.shape)}, "
                         f"dx {tuple(params.dx.shape)}, flip {tuple(params.flip.shape)}")
    for name, offset in (("dy", params.dy), ("dx", params.dx)):
        if offset.numel() and (int(offset.min()) < 0 or int(offset.max()) > 2 * padding):
            raise ValueError(f"params.{name} must lie in [0, {2 * padding}] for padding {padding}")
    padded = F.pad(images, (padding, padding, padding, padding))
    both = torch.stack([padded, padded.flip(-1)])  # [2, N, C, Hp, Wp]
    s = both.stride()
    # windows[f, n, c, row, x0, :] = both[f, n, c, row, x0 : x0 + w]  (a view, nothing copied)
    windows = both.as_strided((2, n, c, h + 2 * padding, 2 * padding + 1, w), (s[0], s[1], s[2], s[3], s[4], s[4]))
    device = images.device
    flip = params.flip.to(device)
    dy, dx = params.dy.to(device), params.dx.to(device)
    dx_in_plane = torch.where(flip, 2 * padding - dx, dx)  # crop of the mirror at 2p - dx = mirror of crop at dx
    rows = dy[:, :, None] + torch.arange(h, device=device)  # [N, B, H]
    return windows[flip.long()[:, :, None, None],
                   torch.arange(n, device=device)[:, None, None, None],
                   torch.arange(c, device=device)[None, None, :, None],
                   rows[:, :, None, :],
                   dx_in_plane[:, :, None, None]]


def crop_flip_views(images: Tensor, num_views: int, generator: torch.Generator | None = None, *,
                    padding: int = CIFAR_PADDING, flip: bool = True, include_original: bool = True) -> Tensor:
    """|B| = `num_views` augmented views [N, |B|, C, H, W] of `images` [N, C, H, W]: row i holds the
    views of image i (labels stay those of image i). Deterministic for a seeded `generator`."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W], got {got}")
    params = sample_view_params(images.shape[0], num_views, generator, padding=padding, flip=flip,
                                include_original=include_original)
    return apply_views(images, params, padding)
