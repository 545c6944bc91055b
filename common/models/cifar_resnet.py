"""CIFAR ResNets of He et al. (CVPR 2016), Sec. 4.2: ResNet-20/32/44/56 (any depth 6n + 2).

Architecture as the paper states it: a 3x3 convolution with 16 filters on the 32x32 input (no
max-pool), then three stages of n basic blocks (two 3x3 convolutions each) on feature maps of
32x32, 16x16 and 8x8 with 16, 32 and 64 filters, n = (depth - 2) / 6; the first block of stages 2
and 3 subsamples with stride 2; global average pooling and a `num_classes`-way linear layer.
BatchNorm follows every convolution, before the ReLU; the block's ReLU comes after the addition.

Choices (documented because the paper leaves them to its Sec. 3.3 / 4.2 wording):

* Shortcuts: option A by default, as the paper uses on CIFAR ("In all cases we use identity
  shortcuts", Sec. 4.2; option A of Sec. 3.3): where the channel count doubles the input is
  subsampled by taking every second pixel in each spatial direction (x[:, :, ::2, ::2], the same
  positions a stride-2 3x3 convolution with padding 1 is centred on) and the new channels are zeros
  appended after the existing ones. This adds no parameters, which gives the paper's Table 6 counts
  (0.27M / 0.46M / 0.66M / 0.85M for 10 classes). `shortcut="B"` uses a 1x1 stride-2 convolution +
  BatchNorm for those shortcuts instead (a few thousand more parameters).
* Convolutions have no bias (BatchNorm follows); weights use He (Kaiming) normal initialisation
  (He et al. 2015, as the paper cites), fan-out mode; BatchNorm starts at weight 1, bias 0; the
  linear head keeps PyTorch's default initialisation.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import ConfigError

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56)  # the depths MMEL's Table 1 uses; any 6n + 2 is accepted
STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.projection: nn.Module | None = None
        if shortcut == "B" and (stride != 1 or in_channels != out_channels):
            self.projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def shortcut(self, x: Tensor) -> Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # zero channels appended (option A)
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 Sec. 4.2 ResNet for 32x32 inputs; `forward` maps [N, C, H, W] to logits [N, K]."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3):
        super().__init__()
        blocks_per_stage = _blocks_per_stage(depth)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes: expected a positive int, got {num_classes!r}")
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut: expected one of {list(SHORTCUTS)}, got {shortcut!r}")
        self.depth = depth
        self.conv = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STAGE_WIDTHS[0])
        blocks: list[nn.Module] = []
        channels = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, shortcut))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def _blocks_per_stage(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"depth: a CIFAR ResNet has depth 6n + 2 with n >= 1 (e.g. {list(CIFAR_RESNET_DEPTHS)}), "
                          f"got {depth!r}")
    return (depth - 2) // 6


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """ResNet-`depth` for CIFAR (20, 32, 44, 56, ...); raises ConfigError naming `depth` otherwise."""
    return CifarResNet(depth, num_classes, shortcut)
