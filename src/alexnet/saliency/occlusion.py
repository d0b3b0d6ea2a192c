"""Occlusion sensitivity (Zeiler & Fergus 2014): hide one part of the image at a time behind a grey patch and
record how much the class's probability drops. No gradients and no torch: the model is any function from uint8
images (N, S, S, 3) to class probabilities (N, C), so a torch model and an exported ONNX graph (test-time views
inside) are explained by the same code, with the same numbers.

Defaults, in pixels of the model's S x S input grid: a patch of S/4 (8 px for CIFAR's 32, 56 for 227), large
enough to hide a part of an object (a wheel, a head), moved by S/8, half a patch, so every pixel away from the
border lies under four patch positions and the map is smoother than the grid of positions. The last row and
column of positions touch the far border, so every pixel is hidden at least once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import AlexnetError
from .maps import normalise_maps

__all__ = ["default_patch", "default_stride", "fill_colour", "occlusion_maps", "patch_starts"]

Probabilities = Callable[[np.ndarray], np.ndarray]


def default_patch(side: int) -> int:
    return max(1, side // 4)


def default_stride(side: int) -> int:
    return max(1, side // 8)


def fill_colour(mean: Sequence[float]) -> np.ndarray:
    """The training images' mean colour in uint8: it normalises to (about) zero, the input a network sees least
    evidence in, rather than black or white, which are themselves strong features."""
    return np.clip(np.round(np.asarray(mean, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def patch_starts(side: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the patch along one axis: every `stride` pixels, the last one flush with the border."""
    starts = list(range(0, side - patch + 1, stride))
    if starts[-1] != side - patch:
        starts.append(side - patch)
    return starts


def check_patch(side: int, patch: int, stride: int) -> None:
    if not 1 <= patch <= side:
        raise AlexnetError(f"--patch must be between 1 and the model's input side {side} (pixels of the "
                           f"{side}x{side} input), got {patch}")
    if not 1 <= stride <= side:
        raise AlexnetError(f"--stride must be between 1 and the model's input side {side}, got {stride}")


def _occluded(images: np.ndarray, starts: list[int], patch: int, fill: np.ndarray, chunk: int
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Occluded copies in chunks of at most `chunk`: (copies, image index, top, left) of each copy."""
    grid = [(n, top, left) for n in range(len(images)) for top in starts for left in starts]
    for begin in range(0, len(grid), chunk):
        part = np.asarray(grid[begin:begin + chunk])
        copies = images[part[:, 0]].copy()
        for copy, (_, top, left) in zip(copies, part):
            copy[top:top + patch, left:left + patch] = fill
        yield copies, part[:, 0], part[:, 1], part[:, 2]


def occlusion_maps(probabilities: Probabilities, images: np.ndarray, targets: Sequence[int], fill: np.ndarray,
                   patch: int | None = None, stride: int | None = None, base: np.ndarray | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """(N, S, S) float32 maps in [0, 1]: at each pixel, the mean drop of the target class's probability over the
    patch positions that hide it; rises (hiding the pixel made the class likelier) count as 0.

    `base`: the targets' probabilities on the intact images, when the caller has them already.
    `batch_size`: occluded copies per call of `probabilities` (they may come from several images).
    """
    images = np.ascontiguousarray(images)
    n, side = len(images), images.shape[1]
    patch = default_patch(side) if patch is None else patch
    stride = default_stride(side) if stride is None else stride
    check_patch(side, patch, stride)
    targets = np.asarray(targets, dtype=np.int64)
    if base is None:
        base = probabilities(images)[np.arange(n), targets]
    starts = patch_starts(side, patch, stride)
    drops = np.zeros((n, side, side), dtype=np.float64)
    hidden = np.zeros((side, side), dtype=np.float64)  # how many positions hide each pixel: the same for all images
    for top in starts:
        for left in starts:
            hidden[top:top + patch, left:left + patch] += 1
    for copies, owner, tops, lefts in _occluded(images, starts, patch, fill, batch_size):
        probs = np.asarray(probabilities(copies), dtype=np.float64)
        drop = np.asarray(base, dtype=np.float64)[owner] - probs[np.arange(len(copies)), targets[owner]]
        for i, top, left, d in zip(owner, tops, lefts, drop):
            drops[i, top:top + patch, left:left + patch] += d
    return normalise_maps(drops / hidden)
