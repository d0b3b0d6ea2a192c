"""AlexNet as in Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks" (NeurIPS 2012), for 227x227 inputs.

The paper says 224x224, but an 11x11 stride-4 convolution without padding only gives its
stated 55x55 map from 227 pixels, so 227 is the default. Section numbers below refer to the paper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import AlexnetError
from .registry import register_model

NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "default")

# The five convolutions (Sec. 3.5, Fig. 2):
# (out channels, kernel, stride, padding, two-tower grouped?, LRN after?, max-pool after?)
# conv3 is not grouped: it is the one layer whose kernels see both towers of conv2.
# LRN follows conv1 and conv2 (Sec. 3.3); max-pooling follows both LRNs and conv5 (Sec. 3.5).
_CONVS = (
    (96, 11, 4, 0, False, True, True),
    (256, 5, 1, 2, True, True, True),
    (384, 3, 1, 1, False, False, False),
    (384, 3, 1, 1, True, False, False),
    (256, 3, 1, 1, True, False, True),
)
# Overlapping pooling, z=3 s=2 (Sec. 3.4).
_POOL_KERNEL, _POOL_STRIDE = 3, 2
_HIDDEN = 4096  # neurons in each hidden fully-connected layer (Sec. 3.5)
# Sec. 5: these layers start with bias 1, "which accelerates the early stages of learning by
# providing the ReLUs with positive inputs"; every other bias starts at 0.
_ONE_BIASES = {"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"}


class AlexNet(nn.Module):
    """A convolutional `features` stack followed by a fully-connected `classifier` stack."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, *, image_size: int, num_classes: int):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.image_size = image_size
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def paper_lrn() -> nn.LocalResponseNorm:
    """Local response normalisation with the paper's constants (Sec. 3.3).

    The paper: b_i = a_i / (k + alpha * sum_{j in n neighbours} a_j^2)^beta with k=2, n=5,
    alpha=1e-4, beta=0.75. torch's LocalResponseNorm divides alpha by n (it uses alpha/n times
    the sum), so alpha = 5 * 1e-4 = 5e-4 here reproduces the paper's plain-sum formula.
    """
    return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def _out_side(side: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a conv/pool, or 0 when the input is smaller than the window."""
    if side + 2 * padding < kernel:
        return 0
    return (side + 2 * padding - kernel) // stride + 1


def feature_side(image_size: int) -> int:
    """Side of the conv5 (after pool) feature map for a square input; 0 if the map vanishes."""
    side = image_size
    for _, kernel, stride, padding, _, _, pool in _CONVS:
        side = _out_side(side, kernel, stride, padding)
        if pool:
            side = _out_side(side, _POOL_KERNEL, _POOL_STRIDE, 0)
        if side == 0:
            return 0
    return side


def _check_options(norm: Any, groups: Any, init: Any, dropout: Any, image_size: int) -> None:
    if norm not in NORMS:
        raise AlexnetError(f"alexnet option norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups not in (1, 2):
        raise AlexnetError(f"alexnet option groups must be 1 (one tower) or 2 (the paper's two towers); got {groups!r}")
    if init not in INITS:
        raise AlexnetError(f"alexnet option init must be one of {', '.join(INITS)}; got {init!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AlexnetError(f"alexnet option dropout must be a number in [0, 1); got {dropout!r}")
    if feature_side(image_size) == 0:
        smallest = next(s for s in range(1, 1024) if feature_side(s) > 0)
        raise AlexnetError(
            f"image_size {image_size} is too small for alexnet: the feature map vanishes (minimum {smallest})"
        )


def _features(norm: str, groups: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for i, (out_channels, kernel, stride, padding, grouped, lrn, pool) in enumerate(_CONVS, start=1):
        # Conv biases stay even with batchnorm so 'batchnorm' only adds BN's parameters.
        layers[f"conv{i}"] = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups if grouped else 1
        )
        if norm == "batchnorm":
            layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{i}"] = nn.ReLU()
        if lrn and norm == "lrn":
            layers[f"lrn{i}"] = paper_lrn()
        if pool:
            layers[f"pool{i}"] = nn.MaxPool2d(_POOL_KERNEL, _POOL_STRIDE)
        in_channels = out_channels
    return nn.Sequential(layers)


def classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """flatten, [dropout], fc6, relu, [dropout], fc7, relu, fc8: the paper's head, also alexnet-cifar's."""
    # Dropout 0.5 in the two hidden fully-connected layers (Sec. 4.2). The two towers share
    # full FC layers here, so one big Linear stands for the paper's pair of half-layers.
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, width in ((6, in_features), (7, hidden)):
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        layers[f"fc{i}"] = nn.Linear(width, hidden)
        layers[f"relu{i}"] = nn.ReLU()
    layers["fc8"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


def _init_paper(model: nn.Module) -> None:
    # Sec. 5: weights from a zero-mean Gaussian with standard deviation 0.01.
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.01)
            nn.init.constant_(module.bias, 1.0 if name in _ONE_BIASES else 0.0)


@register_model("alexnet", default_image_size=227)
def alexnet(
    *,
    num_classes: int,
    image_size: int,
    norm: str = "lrn",
    groups: int = 1,
    init: str = "default",
    dropout: float = 0.5,
) -> AlexNet:
    """The 2012 paper network.

    norm: 'lrn' (paper), 'batchnorm' (BatchNorm2d after every conv, before ReLU, no LRN) or 'none'.
    groups: 1, or 2 for the paper's two-tower connectivity (conv2, conv4, conv5 grouped).
    init: 'default' (torch's initialisation) or 'paper' (Sec. 5).
    dropout: probability in the two hidden FC layers; 0 leaves the Dropout layers out.
    """
    _check_options(norm, groups, init, dropout, image_size)
    side = feature_side(image_size)
    model = AlexNet(
        _features(norm, groups),
        classifier(_CONVS[-1][0] * side * side, _HIDDEN, num_classes, dropout),
        image_size=image_size,
        num_classes=num_classes,
    )
    if init == "paper":
        _init_paper(model)
    return model
