"""A localisation task whose answer is known: each image is noise with one small square placed at random, and
the square's colour alone decides the class. The evidence for the class lies on the square and nowhere else,
so a map that explains a network trained on the task must point there (alexnet.saliency.sanity's pointing
game). Used by tests/test_explain_sanity.py and benchmarks/explain.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, RunConfig, TrainConfig
from ..data.memory import Normalizer, to_device_tensor
from ..data.prepare import InputSpec
from ..inference import LoadedModel
from ..models import create_model

__all__ = ["CLASSES", "COLOURS", "fit_placed_squares", "placed_squares", "small_network"]

# The classes: a red, a green or a blue square, or none. The background's uniform noise holds these colours too, in
# single pixels: only a whole square of one tells the class. Without "none" a network could call a square blue
# for want of red and green, and the blue square would hold no evidence to find.
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (50, 80, 230)}
CLASSES = [*COLOURS, "none"]
# A narrow alexnet-cifar pooled twice: conv3-conv5 (Grad-CAM's layer) on an 8x8 grid of 4 px cells, fine enough
# for its maximum to fall on a 10 px square; one FC layer, no dropout.
SMALL_NET = {"widths": (16, 32, 48, 48, 48), "pools": (1, 2), "global_pool": True, "hidden": 0, "dropout": 0.0}
MEAN, STD = (0.5, 0.5, 0.5), (0.29, 0.29, 0.29)  # uniform noise on [0, 1]: mean 1/2, standard deviation 0.29


def placed_squares(count: int, side: int = 32, square: int = 10, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` images (count, side, side, 3) uint8 of uniform noise, each with one `square` x `square` block of a
    class's colour at a random place wholly inside, or (class "none") no block at all; returns (images, labels
    (count,), masks (count, side, side), True on the block)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), count)
    corners = rng.integers(0, side - square + 1, (count, 2))
    masks = np.zeros((count, side, side), dtype=bool)
    colours = np.array(list(COLOURS.values()), dtype=np.uint8)
    for image, mask, label, (top, left) in zip(images, masks, labels, corners):
        if label < len(colours):
            image[top:top + square, left:left + square] = colours[label]
            mask[top:top + square, left:left + square] = True
    return images, labels, masks


def small_network(side: int = 32, seed: int = 0) -> nn.Module:
    """The task's network, freshly initialised from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("alexnet-cifar", num_classes=len(CLASSES), image_size=side, **SMALL_NET)


def fit_placed_squares(images: np.ndarray, labels: np.ndarray, epochs: int = 4, batch_size: int = 64,
                       lr: float = 0.05, label_smoothing: float = 0.1, seed: int = 0) -> LoadedModel:
    """`small_network` trained on the images with a plain loop: SGD with Nesterov momentum, the rate decayed
    linearly to 0, images in a seeded order, no crops or flips (which would move the square off its mask).
    Returned as a `LoadedModel` on the CPU, explained as `alexnet explain` explains a run (no test-time views)."""
    side = images.shape[1]
    spec = InputSpec("memory", side, store_size=side, mean=MEAN, std=STD)
    device = torch.device("cpu")
    x = Normalizer(list(MEAN), list(STD), side, device, channels_last=False)(to_device_tensor(images, device))
    y = torch.as_tensor(labels, dtype=torch.long)
    model = small_network(side, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=order).split(batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    config = RunConfig(model=ModelConfig("alexnet-cifar", **SMALL_NET),
                       train=TrainConfig(tta=False, channels_last=False, amp="off"))
    return LoadedModel(model.eval(), list(CLASSES), config, spec, device, {})
