"""AlexNet adapted to native 32x32 inputs (CIFAR-10/100).

Same design as the paper (five convolutions, three fully-connected layers, max-pooling after
conv1, conv2 and conv5, dropout in the hidden FC layers), resized for small images:
- every convolution is 3x3 with padding 1: an 11x11 stride-4 first layer would leave a
  32-pixel image with 6x6 maps before any pooling;
- BatchNorm2d replaces LRN (it trains faster and lets a high learning rate work);
- pooling is non-overlapping MaxPool2d(2), so the map halves exactly 32 -> 16 -> 8 -> 4 and
  any multiple of 8 keeps whole maps; the paper's overlapping 3/2 pool would need padding 1
  (and its edge effects) to give the same sizes, so the simpler 2x2 pool is used.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from ..errors import AlexnetError
from .paper import AlexNet, classifier
from .registry import register_model

NORMS = ("batchnorm", "none")
_POOLED = (1, 2, 5)  # convolutions followed by a 2x2 max-pool, as conv1, conv2, conv5 in the paper


def _check_options(widths: Any, hidden: Any, dropout: Any, norm: Any, image_size: int) -> tuple[int, ...]:
    if (
        not isinstance(widths, (tuple, list))
        or len(widths) != 5
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise AlexnetError(f"alexnet-cifar option widths must be 5 positive integers; got {widths!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise AlexnetError(f"alexnet-cifar option hidden must be a positive integer; got {hidden!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AlexnetError(f"alexnet-cifar option dropout must be a number in [0, 1); got {dropout!r}")
    if norm not in NORMS:
        raise AlexnetError(f"alexnet-cifar option norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if image_size < 2 ** len(_POOLED):
        raise AlexnetError(
            f"image_size {image_size} is too small for alexnet-cifar: the feature map vanishes "
            f"(minimum {2 ** len(_POOLED)}; use a multiple of 8)"
        )
    return tuple(widths)


def _features(widths: tuple[int, ...], norm: str) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for i, out_channels in enumerate(widths, start=1):
        batchnorm = norm == "batchnorm"
        # A bias before BatchNorm is cancelled by its mean subtraction, so leave it out.
        layers[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batchnorm)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{i}"] = nn.ReLU()
        if i in _POOLED:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        in_channels = out_channels
    return nn.Sequential(layers)


@register_model("alexnet-cifar", default_image_size=32)
def alexnet_cifar(
    *,
    num_classes: int,
    image_size: int,
    widths: tuple[int, ...] = (64, 128, 256, 256, 256),
    hidden: int = 1024,
    dropout: float = 0.5,
    norm: str = "batchnorm",
) -> AlexNet:
    """AlexNet for small images (default 32x32); image_size should be a multiple of 8, >= 16.

    widths: output channels of conv1..conv5. hidden: width of the two hidden FC layers.
    dropout: probability before each hidden FC layer; 0 leaves the Dropout layers out.
    norm: 'batchnorm' (BatchNorm2d after every conv, before ReLU) or 'none'.
    """
    widths = _check_options(widths, hidden, dropout, norm, image_size)
    side = image_size // 2 ** len(_POOLED)  # each MaxPool2d(2) floors the side to half
    return AlexNet(
        _features(widths, norm),
        classifier(widths[-1] * side * side, hidden, num_classes, dropout),
        image_size=image_size,
        num_classes=num_classes,
    )
