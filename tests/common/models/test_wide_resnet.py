"""Wide ResNets (Zagoruyko and Komodakis 2016; common/models/wide_resnet.py)."""
import pytest
import torch

from common.errors import ConfigError
from common.models.wide_resnet import WideBlock, wide_resnet


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _formula(depth, width, classes, in_channels=3):
    """Parameters by hand: stem conv; per block BN, conv, BN, conv (+ a 1x1 projection where the shape
    changes); the final BN and the linear head."""
    n = (depth - 4) // 6
    total, channels = in_channels * 16 * 9, 16
    for group, w in enumerate((16 * width, 32 * width, 64 * width)):
        for index in range(n):
            total += 2 * channels + channels * w * 9 + 2 * w + w * w * 9
            if channels != w or (group > 0 and index == 0):
                total += channels * w
            channels = w
    return total + 2 * channels + channels * classes + classes


@pytest.mark.parametrize("depth,width,millions", [(28, 10, 36.5), (40, 2, 2.2), (16, 2, None), (10, 1, None)])
def test_parameter_counts(depth, width, millions):
    model = wide_resnet(depth, width, 10)
    assert _count(model) == _formula(depth, width, 10)
    if millions:
        assert round(_count(model) / 1e6, 1) == millions       # the counts quoted for WRN-28-10 / WRN-40-2
    assert _count(wide_resnet(depth, width, 100)) == _formula(depth, width, 100)
    assert _count(wide_resnet(depth, width, 1623, in_channels=1)) == _formula(depth, width, 1623, 1)


def test_shapes_features_and_shortcuts():
    torch.manual_seed(0)
    model = wide_resnet(16, 2, 7).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (3, 128) and model.feature_dim == 128
    assert torch.allclose(model(x), model.fc(feats))
    blocks = [m for m in model.modules() if isinstance(m, WideBlock)]
    assert len(blocks) == 6 and [b.projection is not None for b in blocks] == [True, False] * 3
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1]
    grey = wide_resnet(10, 1, 5, in_channels=1).eval()
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 5) and grey(torch.randn(2, 1, 105, 105)).shape == (2, 5)
    assert torch.count_nonzero(model.fc.bias) == 0


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = wide_resnet(10, 1, 3, dropout=0.5)
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("kwargs,match", [
    ({"depth": 27, "width": 2}, "depth: a WRN has depth 6n \\+ 4"),
    ({"depth": 4, "width": 2}, "depth"),
    ({"depth": 16, "width": 0}, "width: expected a positive int"),
    ({"depth": 16, "width": 2, "num_classes": True}, "num_classes"),
    ({"depth": 16, "width": 2, "dropout": 1.0}, "dropout: expected a number in \\[0, 1\\)"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        wide_resnet(**kwargs)
