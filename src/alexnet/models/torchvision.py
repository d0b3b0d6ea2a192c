"""AlexNet exactly as torchvision builds it (`torchvision.models.alexnet`), so its published ImageNet weights
(alexnet-owt-7be5be79.pth) load as they are: same layer shapes, same state-dict keys.

torchvision's network is the "one weird trick" variant (Krizhevsky 2014, arXiv:1404.5997) rather than the
2012 paper's: 64-192-384-256-256 filters in one tower, no LRN, padding 2 on the 11x11 stride-4 first conv,
and an adaptive average pool to 6x6 before the classifier, so any input side from 63 px up gives the same
9216 features (224 px is what the weights were trained on).
"""

from __future__ import annotations

from torch import nn

from ..errors import AlexnetError
from .registry import register_model

# (in, out, kernel, stride, padding, max-pool after?) of the five convolutions; the Sequential indices then
# fall on torchvision's: features.0, .3, .6, .8, .10 (a ReLU after each conv, a max-pool after 1, 2 and 5).
_CONVS = (
    (3, 64, 11, 4, 2, True),
    (64, 192, 5, 1, 2, True),
    (192, 384, 3, 1, 1, False),
    (384, 256, 3, 1, 1, False),
    (256, 256, 3, 1, 1, True),
)
_POOL_KERNEL, _POOL_STRIDE = 3, 2
_POOLED = 6  # AdaptiveAvgPool2d((6, 6)): what the 224 px map (6x6 after pool5) already is
_HIDDEN = 4096


def feature_side(image_size: int) -> int:
    """Side of the map after the last max-pool (before the adaptive pool); 0 if it vanishes."""
    side = image_size
    for _, _, kernel, stride, padding, pool in _CONVS:
        side = (side + 2 * padding - kernel) // stride + 1 if side + 2 * padding >= kernel else 0
        if pool:
            side = (side - _POOL_KERNEL) // _POOL_STRIDE + 1 if side >= _POOL_KERNEL else 0
        if side <= 0:
            return 0
    return side


MIN_IMAGE_SIZE = next(s for s in range(1, 512) if feature_side(s) > 0)  # 63


class TorchvisionAlexNet(nn.Module):
    """features -> avgpool -> flatten -> classifier, module for module as torchvision's `AlexNet`."""

    def __init__(self, num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for in_ch, out_ch, kernel, stride, padding, pool in _CONVS:
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(_POOL_KERNEL, _POOL_STRIDE))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((_POOLED, _POOLED))
        # Dropout modules stay even at p=0 so the Linear layers keep torchvision's indices 1, 4 and 6.
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * _POOLED * _POOLED, _HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(_HIDDEN, _HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(_HIDDEN, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("alexnet-torchvision", default_image_size=224)
def alexnet_torchvision(*, num_classes: int, image_size: int, dropout: float = 0.5) -> TorchvisionAlexNet:
    """torchvision's AlexNet (the ImageNet weights' layout); `dropout` before the two hidden FC layers."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AlexnetError(f"alexnet-torchvision option dropout must be a number in [0, 1); got {dropout!r}")
    if feature_side(image_size) == 0:
        raise AlexnetError(f"image_size {image_size} is too small for alexnet-torchvision: the feature map "
                           f"vanishes (minimum {MIN_IMAGE_SIZE})")
    return TorchvisionAlexNet(num_classes, float(dropout))
