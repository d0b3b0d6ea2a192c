"""Decode any image file to 8-bit RGB, safely, and map it onto a square grid.

Every image that enters the project (training folders, prediction inputs) goes
through :func:`load_rgb` and then :func:`fit_square`, so a picture is turned
into pixels the same way whether it is being learned from or classified.
:func:`decode_square` is the bulk path for in-memory datasets: plain JPEGs go
straight through libjpeg-turbo (``simplejpeg``), the same pixels PIL gives
without its per-image overhead, and everything else through the two above.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from alexnet.errors import AlexnetError

try:
    import simplejpeg
except ImportError:  # a speed-up only (e.g. a checkout run from source without it): PIL decodes the same pixels
    simplejpeg = None

__all__ = ["UnreadableImageError", "load_rgb", "fit_square", "decode_square"]

_EXIF_ORIENTATION = 0x0112
# Modes whose alpha (or premultiplied alpha) must be flattened rather than dropped:
# dropping it would expose whatever colour happens to sit under transparent pixels.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)
_JPEG_START = b"\xff\xd8\xff"
# libjpeg-turbo converts these to RGB exactly as PIL does; CMYK/YCCK (Adobe's inverted ink) and
# JPEGs stored as RGB are left to PIL.
_PLAIN_COLOURSPACES = frozenset({"YCbCr", "Gray"})
_SOS, _APP1 = 0xDA, 0xE1  # JPEG markers: start of the image data; the EXIF / XMP segment


class UnreadableImageError(AlexnetError):
    """An image file that cannot be decoded; ``path`` and a short ``reason`` are kept
    so that callers decoding many files can report them together."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path} ({reason}); remove, replace or re-save the file")

    def __reduce__(self):  # keep it picklable across worker processes
        return (type(self), (self.path, self.reason))


def _reason(exc: BaseException) -> str:
    """A short one-line description of why decoding failed."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image file"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels; PIL refuses it as a possible decompression bomb"
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and "truncated" in text.lower():
        return "truncated"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:200]


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit ('I;16*') or 32-bit integer ('I') grey images to 8 bits.

    PIL's own conversion clips such images at 255 (almost all white), so scale
    instead: 0..65535 maps to 0..255 by dividing by 257 (65535 / 255), rounded.
    Mode 'I' is assumed to hold 16-bit data too (that is how PIL has opened
    16-bit PNGs); values outside 0..65535 are clipped.
    """
    values = np.asarray(img).astype(np.int64)
    values = np.clip(values, 0, 65535)
    grey = ((values + 128) // 257).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    """Mode 'F': treat values as 0..255 like PIL does, but round and clip explicitly."""
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to RGB (may return ``img`` itself)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode == "I" or mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        return _float_to_rgb(img)
    # Palette/grey/RGB images may carry a transparent colour key in info["transparency"].
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, HSV ... : PIL's conversion is right for these.
    return img.convert("RGB")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (may return ``img`` itself).

    A malformed EXIF block only costs the rotation, not the image: the pixels
    decoded fine, so they are kept as stored.
    """
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        # exif_transpose copies the image; skip it for the common upright case.
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken metadata is not a broken image
        pass
    return img


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file and return it fully decoded, upright, in mode ``RGB``.

    - EXIF orientation is applied, so photos appear the way viewers show them.
    - Transparency (RGBA, LA, palette or colour-key transparency) is composited
      onto a white background; grey, 1-bit, palette and CMYK images are
      converted; 16-bit images are scaled to 8 bits (divide by 257).
    - The whole file is decoded here, so a truncated file fails now, not later.
    - PIL's decompression-bomb limit is kept (``Image.MAX_IMAGE_PIXELS``).
    - Animated images give their first frame.

    Raises :class:`UnreadableImageError` (an ``AlexnetError``) naming the file
    when it is missing, not an image, corrupt, truncated or too large.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(_upright(img))
            if rgb is img:
                # Closing the file below also frees `img`'s pixels: keep a copy.
                rgb = img.copy()
            rgb.load()
            return rgb
    except AlexnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL decoders raise many types on bad input
        raise UnreadableImageError(path, _reason(exc)) from exc


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Map an image onto a ``size`` x ``size`` grid; returns uint8 ``(size, size, 3)``.

    An image that already has that size is returned unchanged. Otherwise it is
    resized (bilinear; PIL widens the filter when shrinking, so this
    antialiases) so that its shorter side is ``size``, then the centre square
    is cropped. This is the single place where arbitrary images are mapped
    onto the model's input grid.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise AlexnetError(f"image size must be a positive integer, got {size!r}; pass e.g. --image-size 32")
    size = int(size)
    if img.mode != "RGB":
        img = _to_rgb(img)
    width, height = img.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        # max(): rounding must never leave the shorter side below `size`.
        new_w = max(size, round(width * scale))
        new_h = max(size, round(height * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left = (new_w - size) // 2
        top = (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    array = np.array(img, dtype=np.uint8)  # a copy: writable and independent of PIL
    return array.reshape(size, size, 3)


def _has_app1(data: bytes) -> bool | None:
    """Whether the JPEG's header segments, up to the image data, include an APP1 segment: EXIF or XMP, either
    of which can carry an orientation that PIL applies. None when the header cannot be walked."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == _SOS:
            return False
        elif marker == _APP1:
            return True
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


@functools.lru_cache(maxsize=None)
def _fast_path_agrees() -> bool:
    """Whether simplejpeg's libjpeg-turbo gives PIL's pixels, checked once on a small 4:2:0 JPEG: it does when
    PIL is built on libjpeg-turbo too (its wheels are); a PIL built on another libjpeg may round otherwise,
    and then every image goes through PIL."""
    if simplejpeg is None or not features.check_feature("libjpeg_turbo"):
        return False
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # one 4:2:0 block
    buf = io.BytesIO()
    try:
        Image.fromarray(noise).save(buf, "JPEG", quality=90, subsampling=2)
        with Image.open(io.BytesIO(buf.getvalue())) as reference:
            expected = np.asarray(reference.convert("RGB"))
        return np.array_equal(_decode_turbo(buf.getvalue()), expected)
    except Exception:  # noqa: BLE001 - any doubt leaves the images to PIL
        return False


def _decode_turbo(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)  # PIL's methods


def _plain_jpeg(data: bytes) -> np.ndarray | None:
    """RGB pixels (H, W, 3) of a JPEG that needs nothing from PIL: YCbCr or grey, no APP1 segment (so no EXIF
    or XMP orientation to apply), within PIL's pixel limit. None for anything else, anything libjpeg-turbo
    rejects, or when the two decoders disagree: PIL then decodes it, or names why it cannot."""
    if simplejpeg is None or not data.startswith(_JPEG_START) or _has_app1(data) is not False:
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
        too_big = Image.MAX_IMAGE_PIXELS and height * width > Image.MAX_IMAGE_PIXELS
        if colourspace not in _PLAIN_COLOURSPACES or too_big or not _fast_path_agrees():
            return None
        return _decode_turbo(data)
    except ValueError:  # truncated or corrupt
        return None


def decode_square(data: bytes, size: int, name: str | os.PathLike[str]) -> np.ndarray:
    """The encoded bytes of an image file as ``fit_square(load_rgb(file), size)``, ~8x faster for plain
    JPEGs (12 against 103 us for a CIFAR-sized one, the same pixels). Raises
    :class:`UnreadableImageError` naming ``name``."""
    pixels = _plain_jpeg(data)
    if pixels is None:
        try:
            return fit_square(load_rgb(io.BytesIO(data)), size)
        except UnreadableImageError as exc:
            raise UnreadableImageError(name, exc.reason) from None
    if pixels.shape[:2] == (size, size):
        return pixels
    return fit_square(Image.fromarray(pixels), size)
