"""The overlay PNG of `alexnet explain --out`: the image file with its saliency map blended on, a colour bar and
the explained class with its probability in the title. No torch here.

The image is drawn pixel for pixel (matplotlib's `figimage`: no resampling, no blur), so the picture is the
file as it is, whole, not the model's crop of it. An image smaller than MIN_SIDE on its shorter side (a CIFAR
picture is 32 px) is enlarged by a whole factor, each pixel a square block, so the map's shape stays readable;
the title and colour bar sit in a margin around it. Figures go through matplotlib's object API with an Agg
canvas: nothing opens a window or touches pyplot's global state.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..atomic import atomic_write

__all__ = ["COLORMAP", "blend", "magnification", "overlay_png", "overlay_title", "write_overlay"]

COLORMAP = "turbo"  # jet's order of colours (blue = nothing, red = most) with even steps in lightness
ALPHA = 0.5  # the map's share of each blended pixel: the image shows through everywhere
MIN_SIDE = 192  # smaller images are enlarged by a whole factor up to this shorter side ...
MAX_SIDE = 4096  # ... while the longer side stays within this
DPI = 100
# Margins in pixels: the title above the image, the colour bar and its labels to its right.
TOP, BOTTOM, LEFT, RIGHT, BAR, GAP = 34, 10, 10, 70, 14, 12
MIN_WIDTH = 320  # room for a title whatever the image's width


def magnification(width: int, height: int) -> int:
    """The whole factor an image is drawn enlarged by: 1 from MIN_SIDE px up."""
    if min(width, height) >= MIN_SIDE:
        return 1
    return max(1, min(math.ceil(MIN_SIDE / min(width, height)), MAX_SIDE // max(width, height)))


def blend(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) with the colour-mapped (H, W) map in [0, 1] laid over it at ALPHA."""
    colours = matplotlib.colormaps[COLORMAP](np.clip(saliency, 0, 1))[..., :3]
    mixed = (1 - ALPHA) * (image.astype(np.float32) / 255) + ALPHA * colours
    return np.clip(np.round(mixed * 255), 0, 255).astype(np.uint8)


def overlay_title(class_name: str, probability: float, method: str) -> str:
    return f"{class_name} {probability * 100:.1f}%  ({method})"


def write_overlay(path: str | os.PathLike[str], image: Image.Image, saliency: np.ndarray, title: str) -> Path:
    """Write the overlay PNG of `image` (PIL, any mode) and its (height, width) map, atomically; returns `path`."""
    png = overlay_png(image, saliency, title)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    return path


def overlay_png(image: Image.Image, saliency: np.ndarray, title: str) -> bytes:
    """The overlay PNG of `image` (PIL, any mode) and its (height, width) map, as bytes (/explain's `overlay`)."""
    rgb = np.asarray(image.convert("RGB"))
    if rgb.shape[:2] != saliency.shape:
        raise ValueError(f"the map is {saliency.shape}, the image {rgb.shape[:2]}")
    height, width = saliency.shape
    k = magnification(width, height)
    picture = blend(rgb, saliency)
    if k > 1:
        picture = picture.repeat(k, axis=0).repeat(k, axis=1)
    shown_w, shown_h = width * k, height * k
    canvas_w, canvas_h = max(LEFT + shown_w + RIGHT, MIN_WIDTH), TOP + shown_h + BOTTOM

    fig = Figure(figsize=(canvas_w / DPI, canvas_h / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    fig.figimage(picture, xo=LEFT, yo=BOTTOM, origin="upper")
    bar = fig.add_axes(((LEFT + shown_w + GAP) / canvas_w, BOTTOM / canvas_h, BAR / canvas_w, shown_h / canvas_h))
    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=COLORMAP), cax=bar)
    colorbar.set_ticks([0, 0.5, 1])
    colorbar.ax.tick_params(labelsize=8)
    fig.text(LEFT / canvas_w, 1 - 8 / canvas_h, title, ha="left", va="top", fontsize=10, weight="bold")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
