"""CIFAR ResNet-20/32/44/56 (He et al. 2016 Sec. 4.2; common/models/cifar_resnet.py)."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import ConfigError
from common.models import cifar_resnet
from common.models.cifar_resnet import BasicBlock

TABLE6_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85}  # He et al. 2016, Table 6 (CIFAR-10)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _formula(depth, num_classes):
    """Parameters counted by hand: stem conv + BN, 2 conv + 2 BN per block, linear head (option A)."""
    n = (depth - 2) // 6
    total, channels = 3 * 16 * 9 + 2 * 16, 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += channels * width * 9 + width * width * 9 + 4 * width
            channels = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", sorted(TABLE6_PARAMS_M))
def test_parameter_counts_match_table6(depth):
    model = cifar_resnet(depth, 10)
    assert _count(model) == _formula(depth, 10)
    assert round(_count(model) / 1e6, 2) == TABLE6_PARAMS_M[depth]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) + 1 == depth  # + the linear layer
    assert _count(cifar_resnet(depth, 100)) == _formula(depth, 100)
    # option B adds two 1x1 projections + BN (16->32, 32->64)
    assert _count(cifar_resnet(depth, 10, shortcut="B")) == _count(model) + 16 * 32 + 64 + 32 * 64 + 128


def test_output_and_stage_shapes():
    model = cifar_resnet(20, 10).eval()
    shapes = []
    hooks = [model.blocks[k].register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for k in (2, 5, 8)]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    with torch.no_grad():
        assert cifar_resnet(56, 100).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    block = BasicBlock(16, 32, stride=2, shortcut="A")
    x = torch.randn(2, 16, 8, 8)
    short = block.shortcut(x)
    assert short.shape == (2, 32, 4, 4)
    assert torch.equal(short[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(short[:, 16:], torch.zeros(2, 16, 4, 4))
    identity = BasicBlock(16, 16, stride=1, shortcut="A")
    assert torch.equal(identity.shortcut(x), x)
    assert sum(p.numel() for p in block.parameters()) == 16 * 32 * 9 + 32 * 32 * 9 + 4 * 32


def test_gradients_flow():
    model = cifar_resnet(20, 10)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("depth", [21, 2, 0, -4, 14.0, "20", True])
def test_bad_depth_raises(depth):
    with pytest.raises(ConfigError, match="depth"):
        cifar_resnet(depth, 10)


def test_bad_num_classes_and_shortcut_raise():
    with pytest.raises(ConfigError, match="num_classes"):
        cifar_resnet(20, 0)
    with pytest.raises(ConfigError, match="shortcut"):
        cifar_resnet(20, 10, shortcut="C")
