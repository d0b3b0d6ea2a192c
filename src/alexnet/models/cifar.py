"""AlexNet adapted to native 32x32 inputs (CIFAR-10/100).

Same design as the paper (five convolutions, three fully-connected layers, max-pooling after
conv1, conv2 and conv5, dropout in the hidden FC layers), resized for small images:
- every convolution is 3x3 with padding 1: an 11x11 stride-4 first layer would leave a
  32-pixel image with 6x6 maps before any pooling;
- BatchNorm2d replaces LRN (it trains faster and lets a high learning rate work);
- pooling is non-overlapping MaxPool2d(2) by default, so the map halves exactly 32 -> 16 -> 8 -> 4
  and any multiple of 8 keeps whole maps; pool_size=3 is the paper's overlapping pooling (3x3 windows,
  stride 2), padded by 1 so that it halves the map the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import AlexnetError
from .paper import AlexNet, classifier
from .registry import register_model

NORMS = ("batchnorm", "none")
INITS = ("default", "dirac")
CONV1_KERNELS = (2, 3)  # conv1's side: 3 (padding 1, as every other conv) or 2 (unpadded: airbench's 2x2 stem)
POOL_SIZES = (2, 3)  # max-pool window: 2 (non-overlapping) or 3 (overlapping, stride 2, as in the paper)
PAPER_POOLS = (1, 2, 5)  # convolutions followed by a 2x2 max-pool, as conv1, conv2, conv5 in the paper


def _conv1_padding(kernel: int) -> int:
    """3x3 keeps the side (padding 1); airbench's 2x2 stem is unpadded and trims it by one pixel."""
    return 1 if kernel == 3 else 0


def _conv1_side(image_size: int, kernel: int) -> int:
    return image_size + 2 * _conv1_padding(kernel) - kernel + 1


def _check_pools(pools: Any, image_size: int, conv1_kernel: int) -> tuple[int, ...]:
    if (
        not isinstance(pools, (tuple, list))
        or not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= 5 for i in pools)
        or len(set(pools)) != len(pools)
    ):
        raise AlexnetError(f"alexnet-cifar option pools must name distinct convolutions 1..5 (e.g. 1,2,5); "
                           f"got {pools!r}")
    trim = image_size - _conv1_side(image_size, conv1_kernel)
    if image_size - trim < 2 ** len(pools):
        raise AlexnetError(
            f"image_size {image_size} is too small for alexnet-cifar with {len(pools)} poolings"
            f"{' after its 2x2 conv1' if trim else ''}: the feature map vanishes (minimum {2 ** len(pools) + trim}; "
            f"use a multiple of {2 ** len(pools)}{' plus 1' if trim else ''})"
        )
    return tuple(sorted(pools))


def _check_options(widths: Any, hidden: Any, dropout: Any, norm: Any, pool_first: Any,
                   global_pool: Any, init: Any, pool_size: Any, conv1_kernel: Any) -> tuple[int, ...]:
    if (
        not isinstance(widths, (tuple, list))
        or len(widths) != 5
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise AlexnetError(f"alexnet-cifar option widths must be 5 positive integers; got {widths!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise AlexnetError(f"alexnet-cifar option hidden must be an integer >= 0 (0: no hidden FC layers); "
                           f"got {hidden!r}")
    for name, value in (("pool_first", pool_first), ("global_pool", global_pool)):
        if not isinstance(value, bool):
            raise AlexnetError(f"alexnet-cifar option {name} must be true or false; got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AlexnetError(f"alexnet-cifar option dropout must be a number in [0, 1); got {dropout!r}")
    if norm not in NORMS:
        raise AlexnetError(f"alexnet-cifar option norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if isinstance(pool_size, bool) or pool_size not in POOL_SIZES:
        raise AlexnetError(f"alexnet-cifar option pool_size must be 2 (2x2 windows) or 3 (the paper's overlapping "
                           f"3x3 windows); got {pool_size!r}")
    if isinstance(conv1_kernel, bool) or conv1_kernel not in CONV1_KERNELS:
        raise AlexnetError(f"alexnet-cifar option conv1_kernel must be 3 (3x3, padded) or 2 (airbench's unpadded 2x2 "
                           f"stem); got {conv1_kernel!r}")
    if init not in INITS:
        raise AlexnetError(f"alexnet-cifar option init must be one of {', '.join(INITS)}; got {init!r}")
    return tuple(widths)


def _init_dirac(features: nn.Sequential) -> None:
    """airbench's identity initialisation: in every conv, the first min(in, out) filters pass their input
    channel through unchanged (a 3x3 kernel with a single 1 at the centre), the rest keep torch's init.
    A plain stack then starts close to the identity map, as a residual net does, without a skip path."""
    for module in features:
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                nn.init.dirac_(module.weight[: min(module.in_channels, module.out_channels)])


def _pool(size: int) -> nn.MaxPool2d:
    """A max-pool that halves the side: 2x2 windows, or 3x3 windows overlapping by one pixel (the paper's)."""
    return nn.MaxPool2d(2) if size == 2 else nn.MaxPool2d(3, stride=2, padding=1)


def _pooled_side(side: int, size: int) -> int:
    """The side `_pool(size)` leaves: 2x2 windows floor the half, 3x3 ones (stride 2, padding 1) round it up."""
    return side // 2 if size == 2 else (side + 1) // 2


def _features(widths: tuple[int, ...], norm: str, pool_first: bool, pools: tuple[int, ...], pool_size: int,
              conv1_kernel: int = 3) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for i, out_channels in enumerate(widths, start=1):
        batchnorm = norm == "batchnorm"
        pooled = i in pools
        # A bias before BatchNorm is cancelled by its mean subtraction, so leave it out.
        kernel = conv1_kernel if i == 1 else 3
        layers[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, kernel, padding=_conv1_padding(kernel),
                                       bias=not batchnorm)
        if pooled and pool_first:
            layers[f"pool{i}"] = _pool(pool_size)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{i}"] = nn.ReLU()
        if pooled and not pool_first:
            layers[f"pool{i}"] = _pool(pool_size)
        in_channels = out_channels
    return nn.Sequential(layers)


def _linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """hidden=0: one fully-connected layer on the pooled conv5 features (the fast CIFAR recipes' head)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    if dropout > 0:
        layers["drop8"] = nn.Dropout(dropout)
    layers["fc8"] = nn.Linear(in_features, num_classes)
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
    pool_first: bool = False,
    pools: tuple[int, ...] = PAPER_POOLS,
    pool_size: int = 2,
    global_pool: bool = False,
    init: str = "default",
    conv1_kernel: int = 3,
) -> AlexNet:
    """AlexNet for small images (default 32x32); image_size should be a multiple of 8, >= 16.

    widths: output channels of conv1..conv5. hidden: width of the two hidden FC layers.
    dropout: probability before each hidden FC layer; 0 leaves the Dropout layers out.
    hidden=0 leaves the hidden FC layers out: conv5's pooled features go straight to the class layer.
    norm: 'batchnorm' (BatchNorm2d after every conv, before ReLU) or 'none'.
    pool_first: max-pool straight after conv1, conv2 and conv5, before batch norm and ReLU. ReLU is
    monotone, so pooling first selects the same maxima whenever a channel's BN scale is positive, and
    the BN and ReLU passes (memory-bound on a CPU) see a quarter of the pixels: 12% more training
    images/s for the narrow CIFAR net on the 2-core box (benchmarks/NOTES.md).
    pools: the convolutions followed by a max-pool (the paper's 1, 2, 5; e.g. 2, 3, 4 keeps conv1 and
    conv2 at full resolution). pool_size: 2 (2x2 windows) or 3 (the paper's overlapping 3x3 windows,
    stride 2, padding 1: the same map sides, each window sharing a row or column with its neighbours).
    global_pool: max-pool conv5's whole remaining map to one value per channel
    before the classifier (the fast CIFAR records' head: widths[-1] features instead of a flattened map).
    init: 'default' (torch's) or 'dirac' (identity filters first, see `_init_dirac`).
    conv1_kernel: 3 (3x3, padding 1) or 2 (2x2 without padding, airbench's stem: the side shrinks by one pixel,
    32 -> 31, and a whitened conv1 holds all 12 +/- eigenvector pairs of the 2x2x3 patches in 24 filters).
    """
    widths = _check_options(widths, hidden, dropout, norm, pool_first, global_pool, init, pool_size, conv1_kernel)
    pools = _check_pools(pools, image_size, conv1_kernel)
    features = _features(widths, norm, pool_first, pools, pool_size, conv1_kernel)
    if init == "dirac":
        _init_dirac(features)
    side = _conv1_side(image_size, conv1_kernel)
    for _ in pools:
        side = _pooled_side(side, pool_size)
    if global_pool:
        features.add_module("pool_global", nn.AdaptiveMaxPool2d(1))
        side = 1
    in_features = widths[-1] * side * side
    return AlexNet(
        features,
        classifier(in_features, hidden, num_classes, dropout) if hidden else
        _linear_head(in_features, num_classes, dropout),
        image_size=image_size,
        num_classes=num_classes,
    )
