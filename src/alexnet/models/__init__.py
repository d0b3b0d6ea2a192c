"""Model registry and the registered AlexNet variants ('alexnet', 'alexnet-cifar', 'alexnet-torchvision')."""

from . import cifar, paper, torchvision  # noqa: F401  (importing registers the models)
from .registry import create_model, default_image_size, list_models, register_model

__all__ = ["create_model", "default_image_size", "list_models", "register_model"]
