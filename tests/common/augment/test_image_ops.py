"""common.augment.image_ops: batched ops against slow per-image references, the embedding layout."""
import time

import numpy as np
import pytest
import torch

from common.augment import image_ops as ops
from common.augment.image_ops import OPS, apply_op, apply_ops, op_index, transformation_embedding


def images(n=4, c=3, h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("m", [0.0, 10.0, -10.0])
@pytest.mark.parametrize("c", [1, 3])
def test_every_op_keeps_shape_and_dtype(name, m, c):
    x = images(c=c)
    y = apply_op(x, op_index(name), m)
    assert y.shape == x.shape and y.dtype == torch.uint8


@pytest.mark.parametrize("name", [o for o in OPS if o not in ("AutoContrast", "Equalize")])
def test_magnitude_zero_and_identity_are_exact(name):
    x = images(h=9, w=7)
    assert torch.equal(apply_op(x, op_index(name), 0.0), x)
    assert torch.equal(apply_op(x, op_index("Identity"), 7.5), x)


def test_solarize_at_threshold_and_posterize_bits():
    x = torch.tensor([0, 3, 127, 128, 200, 255], dtype=torch.uint8).view(1, 1, 1, 6)
    # m = 5: threshold 256 * (1 - 0.5) = 128, pixels >= 128 inverted
    assert apply_op(x, op_index("Solarize"), 5.0).flatten().tolist() == [0, 3, 127, 127, 55, 0]
    assert torch.equal(apply_op(x, op_index("Solarize"), -5.0), apply_op(x, op_index("Solarize"), 5.0))
    assert apply_op(x, op_index("Solarize"), 10.0).flatten().tolist() == [255, 252, 128, 127, 55, 0]
    # m = 5: 8 - round(2) = 6 bits kept (mask 0b11111100); m = 10: 4 bits (0b11110000)
    assert apply_op(x, op_index("Posterize"), 5.0).flatten().tolist() == [0, 0, 124, 128, 200, 252]
    assert apply_op(x, op_index("Posterize"), 10.0).flatten().tolist() == [0, 0, 112, 128, 192, 240]


def slow(x, fn):
    """Per-image, per-pixel reference: fn(img[C][H][W] as lists) -> same."""
    return torch.stack([torch.tensor(fn(img.tolist()), dtype=torch.uint8) for img in x])


def test_photometric_ops_against_slow_references():
    x = images(n=3, h=6, w=5)
    for m in (10.0, -4.0, 6.5):
        f = 1 + m / 10 * 0.9
        bright = slow(x, lambda im: [[[min(255, round(v * f)) for v in row] for row in ch] for ch in im])
        assert torch.equal(apply_op(x, op_index("Brightness"), m), bright)
        t = 256 * (1 - abs(m) / 10)
        sol = slow(x, lambda im: [[[255 - v if v >= t else v for v in row] for row in ch] for ch in im])
        assert torch.equal(apply_op(x, op_index("Solarize"), m), sol)

    def color(im, f=1 + -7 / 10 * 0.9):
        gray = [[0.299 * im[0][i][j] + 0.587 * im[1][i][j] + 0.114 * im[2][i][j] for j in range(5)]
                for i in range(6)]
        return [[[min(255, max(0, round(gray[i][j] + f * (ch[i][j] - gray[i][j])))) for j in range(5)]
                 for i in range(6)] for ch in im]
    got = apply_op(x, op_index("Color"), -7.0)
    assert (got.int() - slow(x, color).int()).abs().max() <= 1          # float32 vs float64 rounding

    def sharp(im, f=1.9):
        out = []
        for ch in im:
            rows = []
            for i in range(6):
                row = []
                for j in range(5):
                    if 0 < i < 5 and 0 < j < 4:
                        s = sum(ch[i + a][j + b] for a in (-1, 0, 1) for b in (-1, 0, 1)) + 4 * ch[i][j]
                        d = s / 13
                    else:
                        d = ch[i][j]
                    row.append(min(255, max(0, round(d + f * (ch[i][j] - d)))))
                rows.append(row)
            out.append(rows)
        return out
    got = apply_op(x, op_index("Sharpness"), 10.0)
    assert (got.int() - slow(x, sharp).int()).abs().max() <= 1


def test_pil_equalize_autocontrast_and_rotate_agree():
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageOps
    x = images(n=3, h=12, w=12)
    x[:, :, :, :4] //= 4
    # AutoContrast: PIL truncates the stretched value, we round it (<= 1 apart)
    for name, m, ref, tol in [("Equalize", 0.0, ImageOps.equalize, 0),
                              ("AutoContrast", 3.0, ImageOps.autocontrast, 1),
                              ("Rotate", 10.0, lambda im: im.rotate(30, fillcolor=(128, 128, 128)), 0)]:
        want = torch.stack([torch.from_numpy(np.array(ref(pil.fromarray(img.permute(1, 2, 0).numpy()))))
                            .permute(2, 0, 1) for img in x])
        assert (apply_op(x, op_index(name), m).int() - want.int()).abs().max() <= tol, name


def test_translate_shear_directions_against_slow_reference():
    x = images(n=2, h=32, w=32)
    # TranslateX at m = 10: 10 px to the right on a 32-px image; -10: to the left; fill 128
    right = apply_op(x, op_index("TranslateX"), 10.0)
    assert torch.equal(right[..., 10:], x[..., :-10]) and bool((right[..., :10] == 128).all())
    down = apply_op(x, op_index("TranslateY"), -5.0)          # 5 px up
    assert torch.equal(down[..., :-5, :], x[..., 5:, :]) and bool((down[..., -5:, :] == 128).all())
    # ShearX, s = 0.3: out(u, v) = in(u + s v, v) about the centre, nearest neighbour
    c = 15.5

    def shear(im):
        return [[[ch[i][round(j - c + 0.3 * (i - c) + c)] if 0 <= round(j - c + 0.3 * (i - c) + c) < 32
                  else 128 for j in range(32)] for i in range(32)] for ch in im]
    assert torch.equal(apply_op(x, op_index("ShearX"), 10.0), slow(x, shear))


def test_mixed_batch_equals_per_sample_application():
    x = images(n=30, h=8, w=8)
    g = torch.Generator().manual_seed(1)
    j = torch.randint(0, len(OPS), (30,), generator=g)
    k = torch.randint(0, len(OPS), (30,), generator=g)
    m1, m2 = ops.sample_magnitudes(30, g), ops.sample_magnitudes(30, g)
    got = apply_ops(x, j, k, m1, m2)
    for i in range(30):
        one = apply_op(apply_op(x[i:i + 1], int(j[i]), float(m1[i])), int(k[i]), float(m2[i]))
        assert torch.equal(got[i:i + 1], one), (OPS[j[i]], OPS[k[i]])


def test_bad_names_magnitudes_and_images():
    with pytest.raises(ValueError, match="unknown image op 'Invert'.*AutoContrast"):
        op_index("Invert")
    x = images()
    for bad in (10.5, -11.0, float("nan")):
        with pytest.raises(ValueError, match=r"magnitude must lie in \[-10, 10\]"):
            apply_op(x, 0, bad)
    with pytest.raises(ValueError, match="op index must lie in"):
        apply_op(x, 14, 1.0)
    with pytest.raises(ValueError, match="uint8 image batch"):
        apply_op(x.float(), 0, 1.0)
    with pytest.raises(ValueError, match="m2 must lie"):
        transformation_embedding(0, 1, 1.0, 12.0)


def test_embedding_layout_is_the_papers():
    K = len(OPS)
    j, k = torch.arange(K).repeat_interleave(K), torch.arange(K).repeat(K)
    m1 = torch.linspace(-10, 10, K * K)
    m2 = torch.linspace(10, 0, K * K)
    e = transformation_embedding(j, k, m1, m2)
    assert e.shape == (K * K, 28) and e.dtype == torch.float32
    free = {"AutoContrast", "Equalize", "Identity"}
    for i in range(K * K):
        jj, kk = int(j[i]) + 1, int(k[i]) + 1                  # the paper's 1-based indices
        want = torch.zeros(28)
        want[2 * jj - 1 - 1] = 11.0 if OPS[jj - 1] in free else abs(float(m1[i])) + 1   # position 2j - 1
        want[2 * kk - 1] = 11.0 if OPS[kk - 1] in free else float(m2[i]) + 1              # position 2k
        assert torch.equal(e[i], want), (OPS[jj - 1], OPS[kk - 1])
    # same op twice: two different columns; signed=True keeps the direction of directed ops only
    r = op_index("Rotate")
    assert transformation_embedding(r, r, 3.0, 4.0)[0, 2 * r:2 * r + 2].tolist() == [4.0, 5.0]
    s = transformation_embedding([r, op_index("Solarize")], [op_index("Identity")] * 2, [-3.0, -3.0],
                                 [-2.0, -2.0], signed=True)
    assert s[0, 2 * r].item() == -4.0 and s[1, 2 * op_index("Solarize")].item() == 4.0
    assert s[:, 2 * op_index("Identity") + 1].tolist() == [11.0, 11.0]


def test_flip_crop_cutout_and_determinism_per_generator():
    x = images(n=16, h=32, w=32)
    out = ops.flip_crop(x, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):                       # each output is one of the 2 x 81 flip/crop candidates
        cands = torch.stack([p[:, a:a + 32, b:b + 32] for p in (padded[i], padded[i].flip(2))
                             for a in range(9) for b in range(9)])
        assert bool((cands == out[i]).flatten(1).all(1).any())
    holes = ops.cutout(torch.zeros(200, 1, 32, 32, dtype=torch.uint8), 16, torch.Generator().manual_seed(0), 7)
    area = (holes == 7).flatten(1).sum(1)
    assert int(area.max()) == 256 and int(area.min()) >= 64 and bool(((holes == 0) | (holes == 7)).all())

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        j = torch.randint(0, len(OPS), (16,), generator=g)
        k = torch.randint(0, len(OPS), (16,), generator=g)
        return ops.augment(x, j, k, ops.sample_magnitudes(16, g), ops.sample_magnitudes(16, g), generator=g)
    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_pipeline_throughput(capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                  # one thread per run, as the runner's workers
    try:
        rate = _throughput()
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print(f"\n[image_ops] flip/crop + 14-op pair + Cutout16, 1 thread: {rate:,.0f} images/s "
              "(batches of 128 x 3x32x32)")


def _throughput():
    g = torch.Generator().manual_seed(0)
    x = images(n=128, h=32, w=32)
    j = torch.randint(0, len(OPS), (128,), generator=g)
    k = torch.randint(0, len(OPS), (128,), generator=g)
    m1, m2 = ops.sample_magnitudes(128, g), ops.sample_magnitudes(128, g)
    ops.augment(x, j, k, m1, m2, generator=g)                      # warm-up
    start = time.perf_counter()
    for _ in range(5):
        ops.augment(x, j, k, m1, m2, generator=g)
    return 5 * 128 / (time.perf_counter() - start)
