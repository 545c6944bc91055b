"""Model builders shared by the papers."""
from common.models.cifar_resnet import CifarResNet, cifar_resnet  # noqa: F401  (CIFAR ResNet-20/32/44/56)
from common.models.resnet import build_image_model

__all__ = ["build_image_model"]
