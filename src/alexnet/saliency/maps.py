"""A saliency map on the model's input grid, brought back onto the image file it came from. No torch here.

`alexnet predict` turns an image of any size into the S x S grid the model reads (alexnet.data.prepare):

- memory models (`fit_square`): the shorter side resized to S, the centre square cut out;
- streamed models (`centre_view`): the shorter side resized to `resize`, the centre `image_size` square cut out.

Either way the grid shows an axis-aligned box of the original image. `input_box` finds that box with the same
arithmetic (rounding included) and `to_image` samples the map bilinearly at the centre of every pixel of the
file: a pixel of the result is a pixel of the file, and the parts of the image the crop left out get 0.
"""

from __future__ import annotations

import numpy as np

from ..data.limits import IMAGE_PIXELS
from ..data.prepare import InputSpec, centre_box

__all__ = ["file_map", "input_box", "normalise_maps", "peak", "to_image"]

Box = tuple[float, float, float, float]


def fit_square_box(width: int, height: int, size: int) -> Box:
    """The box of the original image that `images.fit_square(img, size)` maps onto its size x size grid."""
    if (width, height) == (size, size):
        return 0.0, 0.0, float(size), float(size)
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if new_w * new_h > max(width * height, IMAGE_PIXELS.default):  # a sliver: its centre square resized directly
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return float(left), float(top), float(left + side), float(top + side)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    sx, sy = width / new_w, height / new_h  # each axis keeps its own (rounded) scale, as PIL's resize does
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def centre_view_box(width: int, height: int, size: int, resize: int) -> Box:
    """The box of the original image that `prepare.centre_view(img, size, resize)` cuts out."""
    scale = resize / min(width, height)
    new = (max(resize, int(width * scale)), max(resize, int(height * scale)))
    if new[0] * new[1] > max(width * height, IMAGE_PIXELS.default):  # a sliver: the box resized directly
        left, top, right, bottom = centre_box(*new, size)
        return left / scale, top / scale, right / scale, bottom / scale
    if min(width, height) == resize:
        new_w, new_h = width, height
    elif width <= height:  # resize_shorter's arithmetic
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    left, top, right, bottom = centre_box(new_w, new_h, size)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, right * sx, bottom * sy


def input_box(spec: InputSpec, width: int, height: int) -> Box:
    """(left, top, right, bottom), in the original image's pixels, of what became the model's S x S input."""
    if spec.kind == "memory":
        return fit_square_box(width, height, int(spec.store_size))
    return centre_view_box(width, height, int(spec.image_size), int(spec.resize))


def _axis(count: int, start: float, end: float, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of `count` pixels along one axis of the file: the two map cells to blend, the weight of the second,
    and whether the pixel lies inside the box at all."""
    centres = (np.arange(count) + 0.5 - start) * (side / (end - start))  # in map cells, 0..side inside the box
    inside = (centres >= 0) & (centres < side)
    # Cell i's centre sits at i + 0.5 (as in torch's align_corners=False); beyond the outer centres, the edge cell.
    pos = np.clip(centres - 0.5, 0, side - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, side - 1)
    return low, high, (pos - low).astype(np.float32), inside


def to_image(saliency: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """A (S, S) map over the model's input -> (height, width) float32 over the image file; 0 outside `box`."""
    side = saliency.shape[0]
    if saliency.shape != (side, side):
        raise ValueError(f"expected a square map, got {saliency.shape}")
    left, top, right, bottom = box
    x0, x1, fx, inside_x = _axis(width, left, right, side)
    y0, y1, fy, inside_y = _axis(height, top, bottom, side)
    m = saliency.astype(np.float32, copy=False)
    columns = m[:, x0] * (1 - fx) + m[:, x1] * fx  # (S, width): interpolated along x first, then along y
    out = columns[y0] * (1 - fy)[:, None] + columns[y1] * fy[:, None]
    out *= inside_y[:, None] & inside_x[None, :]
    return out


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each map (..., H, W) scaled so its maximum is 1 and clipped to [0, 1]; an all-zero map stays zero."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0, None)
    top = maps.max(axis=(-2, -1), keepdims=True)
    return np.clip(np.divide(maps, top, out=np.zeros_like(maps), where=top > 0), 0, 1)


def file_map(spec: InputSpec, saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (S, S) map over the model's input -> the (height, width) heatmap of the image file, in [0, 1]."""
    return normalise_maps(to_image(saliency, input_box(spec, width, height), width, height))


def peak(saliency: np.ndarray) -> dict[str, int] | None:
    """Where a map is largest, {"x", "y"} in its pixels (the first such pixel); None for an all-zero map."""
    if not saliency.size or not saliency.max() > 0:
        return None
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return {"x": int(x), "y": int(y)}
