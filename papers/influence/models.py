"""Classifiers F: the four-layer all-convolutional MNIST CNN of Ratner et al.'s setup and a normalising
wrapper that exposes F's top fully connected layer (`fc`) and its input features (Sec. 3.4).

`AllConvCNN` (Sec. 5.2: "a four-layer all-convolutional CNN"; the layer sizes are not published in either
paper's text, so they are ours): conv 5x5/1 -> 32, conv 3x3/2 -> 64, conv 3x3/2 -> 128 (each BatchNorm +
ReLU; strided convolutions instead of pooling, Springenberg et al.'s all-convolutional design), global average
pooling, then the fourth layer, the 1x1 class convolution, written as `nn.Linear(128, 10)` on the pooled
features (a 1x1 convolution and global average pooling commute, so this is the same function). BatchNorm is
our addition: F is trained with Adam lr 0.01 (Appendix B.1), which plain deep conv stacks do not tolerate well.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from common.models import cifar_resnet

MNIST_MOMENTS = ((0.1307,), (0.3081,))                     # mean/std of the MNIST train pixels in [0, 1]


class AllConvCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c = [], in_channels
        for k, w in enumerate(widths):
            kernel, stride = (5, 1) if k == 0 else (3, 2)
            layers += [nn.Conv2d(c, w, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


class Classifier(nn.Module):
    """F on images in [0, 1]: per-channel (x - mean) / std, then `net` (which has a top `fc` layer), in the
    channels_last memory format (measured faster for these convolutions on CPU)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.net(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))

    def features(self, x: Tensor) -> Tensor:
        """The input of the top fully connected layer (differentiable in x)."""
        captured = []
        handle = self.net.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.forward(x)
        finally:
            handle.remove()
        return captured[0]


def build_classifier(arch: str, num_classes: int, mean, std) -> Classifier:
    """`cnn4` (MNIST) or `resnet<depth>` (CIFAR ResNets, common.models)."""
    if arch == "cnn4":
        return Classifier(AllConvCNN(num_classes), mean, std)
    if arch.startswith("resnet"):
        return Classifier(cifar_resnet(int(arch.removeprefix("resnet")), num_classes), mean, std)
    raise ValueError(f"arch: {arch!r}; expected 'cnn4' or 'resnet<depth>'")
