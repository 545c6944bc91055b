"""Wide residual networks of Zagoruyko and Komodakis (BMVC 2016): WRN-d-k, e.g. WRN-28-10, WRN-40-2.

Architecture as the paper's Table 1 states it: a 3x3 convolution with 16 filters, then three groups
of n = (d - 4) / 6 pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) with
16k, 32k and 64k filters, the first block of groups 2 and 3 subsampling with stride 2,
then BN-ReLU, global average pooling and a linear layer (the paper's depth d = 6n + 4). WRN-28-10
has 36.5M and WRN-40-2 2.2M parameters on CIFAR-10 (the counts quoted for them in the literature).

Choices (the paper leaves them to its released code, which we do not copy):

* A block whose input and output shapes differ (first block of each group, where the width or the
  stride changes) adds a 1x1 convolution (stride as the block) on the pre-activated input as its
  shortcut; every other shortcut is the identity.
* Convolutions have no bias; He (Kaiming) normal initialisation, fan-out mode; BatchNorm weight 1,
  bias 0; the linear layer's bias 0 and PyTorch's default weight initialisation.
* `dropout` (between the two convolutions of a block) defaults to 0, as AutoAugment-style CIFAR
  training of WRN-28-10 and WRN-40-2 uses it.
* Any input size works (global average pooling); `in_channels` 1 for grey-level images (Omniglot).

`features(x)` returns the pooled penultimate features [N, 64k] (what MetaAugment's policy network
reads), `forward(x)` = `fc(features(x))`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError


class WideBlock(nn.Module):
    """Pre-activation basic block: conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.projection = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                           if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.projection is None else self.projection(pre))


class WideResNet(nn.Module):
    """WRN-depth-width; `forward` maps [N, C, H, W] to logits [N, num_classes]."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        n = _blocks_per_group(depth)
        for name, value in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive int, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        self.depth, self.width = depth, width
        widths = (16 * width, 32 * width, 64 * width)
        self.conv = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        blocks, channels = [], 16
        for group, w in enumerate(widths):
            for index in range(n):
                blocks.append(WideBlock(channels, w, 2 if group > 0 and index == 0 else 1, float(dropout)))
                channels = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.feature_dim = channels
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features [N, 64 * width]."""
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return out.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _blocks_per_group(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"depth: a WRN has depth 6n + 4 with n >= 1 (e.g. 16, 28, 40), got {depth!r}")
    return (depth - 4) // 6


def wide_resnet(depth: int, width: int, num_classes: int = 10, dropout: float = 0.0,
                in_channels: int = 3) -> WideResNet:
    """WRN-`depth`-`width` (WRN-28-10, WRN-40-2, ...); ConfigError naming the bad argument otherwise."""
    return WideResNet(depth, width, num_classes, dropout, in_channels)
