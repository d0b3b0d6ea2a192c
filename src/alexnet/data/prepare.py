"""One image -> the model's uint8 input grid, without torch.

`alexnet predict`, the HTTP service and evaluation of streamed folders all bring a single picture to the
model through here, so it is prepared the same way everywhere. What a run did is described by `InputSpec`
(saved in every checkpoint and exported model folder):

- kind "memory" (small images held in RAM while training): the picture is fitted onto a square of
  ``store_size`` pixels (`images.fit_square`); any resize to the model's side happens in the model's input
  step (inside the network's normalisation, or inside an exported ONNX graph);
- kind "stream" (photo folders): the shorter side goes to ``resize`` and the centre ``image_size`` square
  is cut out (`centre_view`), as the streamed evaluation does.

Nothing here imports torch, so an exported model served by onnxruntime stays light.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import AlexnetError
from .images import IMAGE_PIXELS, UnreadableImageError, decode_square, fit_square, load_rgb

try:
    import simplejpeg
except ImportError:  # a speed-up only: PIL reads the same header
    simplejpeg = None

__all__ = ["InputSpec", "ImageLimitError", "centre_box", "check_pixels", "centre_view", "prepare_bytes",
           "prepare_image", "prepare_pixels", "resize_shorter"]

_BILINEAR = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class InputSpec:
    """How raw images become model input: 'memory' stores them at store_size; 'stream' resizes then crops."""

    kind: str  # memory | stream
    image_size: int
    store_size: int | None = None  # memory: the stored square side
    resize: int | None = None  # stream: shorter side before the centre crop
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def input_side(self) -> int:
        """The side S of the uint8 (S, S, 3) image handed to the model (before any resize inside it)."""
        return int(self.store_size if self.kind == "memory" else self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


class ImageLimitError(AlexnetError):
    """An image whose pixel count is over the limit a caller set (checked from its header, before decoding)."""


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize (bilinear, antialiased) so the shorter side is ``size``; as torchvision's Resize(int)."""
    width, height = img.size
    if min(width, height) == size:
        return img
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return img.resize(new, _BILINEAR)


def centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of the centred ``size`` square, rounded like torchvision."""
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return left, top, left + size, top + size


def centre_view(img: Image.Image, size: int, resize: int) -> np.ndarray:
    """The evaluation view of one image: shorter side to `resize`, then the centre `size` square (HWC uint8)."""
    width, height = img.size
    scale = resize / min(width, height)
    new = (max(resize, int(width * scale)), max(resize, int(height * scale)))
    if new[0] * new[1] > max(width * height, IMAGE_PIXELS.default):
        # A sliver (say 1 x 3,000,000 px) would be resized to hundreds of millions of pixels first: resize only
        # the part of the original that becomes the centre square.
        box = tuple(v / scale for v in centre_box(*new, size))
        return np.asarray(img.resize((size, size), _BILINEAR, box=box))
    img = resize_shorter(img, resize)
    return np.asarray(img.crop(centre_box(*img.size, size)))


def prepare_pixels(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded RGB image -> uint8 (S, S, 3) exactly as evaluation sees it, before normalisation."""
    if spec.kind == "memory":
        return fit_square(img, spec.store_size)
    return centre_view(img, spec.image_size, spec.resize)


def prepare_image(path: str | os.PathLike[str], spec: InputSpec) -> np.ndarray:
    """One image file -> uint8 (S, S, 3) exactly as evaluation sees it, before normalisation."""
    return prepare_pixels(load_rgb(path), spec)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded image's header declares, read without decoding its pixels; None when the
    header cannot be read (the decoder then says what is wrong). PIL's DecompressionBombError passes through."""
    if simplejpeg is not None and data.startswith(b"\xff\xd8\xff"):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(width), int(height)
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 - not an image, truncated header ...: the decoder names the reason
        return None


def check_pixels(data: bytes, name: str, max_pixels: int, size: tuple[int, int] | None = None) -> None:
    """Refuse (ImageLimitError) an encoded image whose header declares more than `max_pixels` pixels, before
    anything is decoded. A header that cannot be read passes: the decoder then says what is wrong. `size`: the
    header's (width, height) when the caller has read it already."""
    try:
        size = size or declared_size(data)
    except Image.DecompressionBombError:  # PIL's own ceiling, far above any sane limit
        raise ImageLimitError(f"image {name} has too many pixels (over PIL's limit of "
                              f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}); send a smaller image") from None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageLimitError(f"image {name} has {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over the "
                              f"limit of {max_pixels:,}; send a smaller image")


def prepare_bytes(data: bytes, name: str | os.PathLike[str], spec: InputSpec,
                  max_pixels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The encoded bytes of an image file -> what `prepare_image` gives for that file; errors name `name`.

    With `max_pixels`, an image whose header declares more pixels is refused (ImageLimitError) before its
    pixels are decoded; `size`: the header's (width, height) when the caller has read it (`declared_size`).
    """
    if max_pixels is not None:
        check_pixels(data, str(name), max_pixels, size)
    if spec.kind == "memory":
        return decode_square(data, spec.store_size, str(name))  # libjpeg-turbo for plain JPEGs, same pixels
    try:
        img = load_rgb(io.BytesIO(data))
    except UnreadableImageError as exc:
        raise UnreadableImageError(name, exc.reason) from None
    return centre_view(img, spec.image_size, spec.resize)
