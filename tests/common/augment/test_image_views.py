"""Batched random-crop + flip views (common/augment/image_views.py) against a slow per-image loop."""
import time

import pytest
import torch

from common.augment.image_views import ViewParams, apply_views, crop_flip_views, sample_view_params


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _reference(images, params, padding):
    """One image and one view at a time: zero canvas, paste, crop at (dy, dx), mirror if flagged."""
    n, c, h, w = images.shape
    b = params.dy.shape[1]
    out = torch.empty(n, b, c, h, w, dtype=images.dtype)
    for i in range(n):
        canvas = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=images.dtype)
        canvas[:, padding:padding + h, padding:padding + w] = images[i]
        for j in range(b):
            dy, dx = int(params.dy[i, j]), int(params.dx[i, j])
            crop = canvas[:, dy:dy + h, dx:dx + w]
            out[i, j] = crop.flip(-1) if bool(params.flip[i, j]) else crop
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_views_match_the_reference_loop_exactly(dtype):
    images = torch.randint(0, 256, (3, 2, 6, 5), generator=_gen(1)).to(dtype)
    params = sample_view_params(3, 7, _gen(2), padding=2)
    views = apply_views(images, params, padding=2)
    assert views.shape == (3, 7, 2, 6, 5) and views.dtype == dtype
    assert torch.equal(views, _reference(images, params, 2))


def test_a_view_is_the_original_shifted_by_its_offset():
    images = torch.rand(2, 3, 8, 8, generator=_gen(3)) + 1.0  # no zeros inside the image
    params = ViewParams(torch.tensor([[4, 0], [7, 2]]), torch.tensor([[4, 8], [1, 6]]),
                        torch.zeros(2, 2, dtype=torch.bool))
    views = apply_views(images, params, padding=4)
    for i in range(2):
        for j in range(2):
            sy, sx = int(params.dy[i, j]) - 4, int(params.dx[i, j]) - 4  # view[r, c] = image[r + sy, c + sx]
            for r in range(8):
                for col in range(8):
                    inside = 0 <= r + sy < 8 and 0 <= col + sx < 8
                    expected = images[i, :, r + sy, col + sx] if inside else torch.zeros(3)
                    assert torch.equal(views[i, j, :, r, col], expected)


def test_flips_are_exact_mirrors():
    images = torch.randn(4, 3, 5, 7, generator=_gen(4))
    params = sample_view_params(4, 6, _gen(5), padding=0, include_original=False)
    views = apply_views(images, params, padding=0)
    assert bool(params.flip.any()) and bool((~params.flip).any())
    for i in range(4):
        for j in range(6):
            assert torch.equal(views[i, j], images[i].flip(-1) if params.flip[i, j] else images[i])
    no_flip = crop_flip_views(images, 6, _gen(5), padding=0, flip=False)
    assert torch.equal(no_flip, images[:, None].expand(4, 6, 3, 5, 7))


def test_first_view_is_the_original_and_views_stay_with_their_example():
    n = 5
    images = (torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None] * torch.ones(n, 3, 8, 8))
    views = crop_flip_views(images, 9, _gen(6), padding=2)
    assert torch.equal(views[:, 0], images)
    for i in range(n):  # only image i's value (and the zero border) appears in row i
        values = set(views[i].unique().tolist())
        assert values <= {0.0, float(i + 1)} and float(i + 1) in values
    random_first = sample_view_params(200, 3, _gen(7), padding=4, include_original=False)
    assert not bool(((random_first.dy[:, 0] == 4) & (random_first.dx[:, 0] == 4)).all())


def test_offsets_and_flips_cover_their_ranges():
    params = sample_view_params(400, 10, _gen(8), padding=4)
    rest = slice(1, None)
    assert set(params.dy[:, rest].unique().tolist()) == set(range(9))
    assert set(params.dx[:, rest].unique().tolist()) == set(range(9))
    assert 0.45 < params.flip[:, rest].float().mean().item() < 0.55
    assert bool((params.dy[:, 0] == 4).all() and (params.dx[:, 0] == 4).all() and not params.flip[:, 0].any())


def test_deterministic_per_generator_seed():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=_gen(9))
    a = crop_flip_views(images, 5, _gen(10))
    assert torch.equal(a, crop_flip_views(images, 5, _gen(10)))
    assert not torch.equal(a, crop_flip_views(images, 5, _gen(11)))
    g = _gen(10)
    first, second = crop_flip_views(images, 5, g), crop_flip_views(images, 5, g)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances


@pytest.mark.parametrize("call, match", [
    (lambda: crop_flip_views(torch.zeros(3, 8, 8), 2), "images"),
    (lambda: crop_flip_views(torch.zeros(1, 3, 8, 8), 0), "num_views"),
    (lambda: crop_flip_views(torch.zeros(1, 3, 8, 8), 2, padding=-1), "padding"),
    (lambda: apply_views(torch.zeros(2, 3, 8, 8), sample_view_params(3, 2)), "params"),
    (lambda: apply_views(torch.zeros(1, 3, 8, 8), ViewParams(torch.tensor([[9]]), torch.tensor([[0]]),
                                                             torch.tensor([[False]])), padding=4), "dy"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_throughput_prints_views_per_second():
    """No timing assert (shared CPUs); prints the rate of 32x32 CIFAR views, run with -s to see it."""
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=_gen(12))
    g = _gen(13)
    crop_flip_views(images, 10, g)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        views = crop_flip_views(images, 10, g)
        best = min(best, time.perf_counter() - start)
    assert views.shape == (128, 10, 3, 32, 32)
    print(f"\ncrop_flip_views: {128 * 10 / best:,.0f} views/s (uint8 32x32, N=128, |B|=10, "
          f"{torch.get_num_threads()} threads)")
