"""Image classifiers: torchvision ImageNet-style ResNets applied to raw 32x32 input (as hu19)."""
from __future__ import annotations

import torchvision
from torch import nn

from common.errors import ConfigError

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")


def build_image_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet with a `num_classes`-way head (hu19's official code kept the 1000-way
    ImageNet head, a bug not reproduced here). `pretrained` loads ImageNet weights, which need the
    torchvision weight cache (no download happens on machines without internet)."""
    if arch not in TORCHVISION_RESNETS:
        raise ConfigError(f"arch: unknown image model {arch!r}; expected one of {list(TORCHVISION_RESNETS)}")
    if not pretrained:
        return getattr(torchvision.models, arch)(num_classes=num_classes)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        model = getattr(torchvision.models, arch)(weights=weights)
    except Exception as exc:
        raise ConfigError(f"pretrained {arch}: cannot load ImageNet weights ({exc}); they must be in the "
                          "torch hub cache ($TORCH_HOME) on machines without internet") from exc
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
