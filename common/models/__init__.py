"""Model builders shared by the papers."""
from common.models.resnet import build_image_model

__all__ = ["build_image_model"]
