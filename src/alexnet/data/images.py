"""Decode any image file to 8-bit RGB, safely, and map it onto a square grid.

Every image that enters the project (training folders, prediction inputs, the service) goes
through :func:`load_rgb` and then :func:`fit_square`, so a picture is turned
into pixels the same way whether it is being learned from or classified.
:func:`decode_square` is the bulk path for in-memory datasets: plain JPEGs go
straight through libjpeg-turbo (``simplejpeg``), the same pixels PIL gives
without its per-image overhead, and everything else through the two above.

Untrusted files are bounded before they are decoded (see ``limits.py``): a file over
ALEXNET_MAX_IMAGE_BYTES is not read, an image whose header declares more than
ALEXNET_MAX_IMAGE_PIXELS pixels is not decoded (Pillow's decompression-bomb warning is an
error here), and only the formats in :data:`FORMATS` are opened, so none of Pillow's
rarer decoders (or Ghostscript, for EPS) ever sees a file named ``.jpg``.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from alexnet.data.limits import IMAGE_BYTES, IMAGE_PIXELS
from alexnet.errors import AlexnetError

try:
    import simplejpeg
except ImportError:  # a speed-up only (e.g. a checkout run from source without it): PIL decodes the same pixels
    simplejpeg = None

__all__ = ["FORMATS", "ImageTooLargeError", "UnreadableImageError", "load_rgb", "fit_square", "decode_square",
           "read_image_file"]

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""The Pillow formats an image may be in, whatever its name says (camera MPO files open as JPEG)."""

# Pillow warns about an image over its pixel threshold and decodes it anyway; the same limit is an error
# here (IMAGE_PIXELS), so its warning is one too: it then never prints a second line before the refusal.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Damaged metadata in a file that decodes (or that load_rgb refuses with its own line) is not worth a
# second line on stderr.
warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF|Metadata Warning|Truncated File Read|"
                        r"Tag data larger than file", category=UserWarning, module=r"PIL\.")

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
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


class UnreadableImageError(AlexnetError):
    """An image file that cannot be decoded; ``path`` and a short ``reason`` are kept
    so that callers decoding many files can report them together."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path} ({reason}); remove, replace or re-save the file")

    def __reduce__(self):  # keep it picklable across worker processes
        return (type(self), (self.path, self.reason))


class ImageTooLargeError(UnreadableImageError):
    """An image over a limit of ``limits.py`` (file size or pixels), refused before it is decoded."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(path, reason)
        AlexnetError.__init__(self, f"refusing image {self.path}: {reason}")


def _too_large(path, amount: str, limit) -> ImageTooLargeError:
    value = limit.get()
    return ImageTooLargeError(path, f"{amount}, over the limit of {limit.describe(value)}; "
                                    f"set {limit.var} to raise it")


def _pixel_limit() -> int:
    """IMAGE_PIXELS in force; Pillow's own threshold is raised to it when the variable asks for more, so
    Pillow does not refuse (inside ``Image.open``) what the variable allows."""
    limit = IMAGE_PIXELS.get()
    if Image.MAX_IMAGE_PIXELS and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _check_pixels(path, width: int, height: int, limit: int) -> None:
    """Refuse an image whose declared size is over ``limit``, before its pixels are decoded."""
    if width * height > limit:
        raise _too_large(path, f"{width}x{height} = {width * height:,} pixels", IMAGE_PIXELS)


def _check_bytes(path, size: int) -> None:
    if size > IMAGE_BYTES.get():
        raise _too_large(path, f"the file holds {size:,} bytes", IMAGE_BYTES)


def _check_file(path: str | os.PathLike[str]) -> None:
    """A path must name a regular file (a FIFO or device would block or never end) within IMAGE_BYTES."""
    st = os.stat(path)  # FileNotFoundError etc. are named by the caller
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImageError(path, "not a regular file")
    _check_bytes(path, st.st_size)


def _check_stream(fp) -> None:
    """The size of an in-memory or seekable file object, checked as a file's would be."""
    if isinstance(fp, io.BytesIO):
        _check_bytes("<bytes>", fp.getbuffer().nbytes)
    elif fp.seekable():
        here = fp.tell()
        _check_bytes("<stream>", fp.seek(0, io.SEEK_END) - here)
        fp.seek(here)


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file, checked first: a regular file within ALEXNET_MAX_IMAGE_BYTES
    (:class:`UnreadableImageError` otherwise). Other ``OSError``\\s (missing, unreadable) propagate."""
    _check_file(path)
    with open(path, "rb") as handle:
        return handle.read(IMAGE_BYTES.get() + 1)


def _reason(exc: BaseException) -> str:
    """A short one-line description of why decoding failed."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return f"not a recognised image file; accepted formats: {', '.join(FORMATS)}"
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


def _bomb(path, exc: Exception) -> ImageTooLargeError:
    """Pillow's own refusal (its threshold, or twice it) said in our terms."""
    found = _BOMB_SIZE.search(str(exc))
    amount = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return _too_large(path, amount, IMAGE_PIXELS)


def load_rgb(path: str | os.PathLike[str] | io.IOBase) -> Image.Image:
    """Open an image file (a path or a binary file object) and return it fully decoded, upright, in mode ``RGB``.

    - EXIF orientation is applied, so photos appear the way viewers show them.
    - Transparency (RGBA, LA, palette or colour-key transparency) is composited
      onto a white background; grey, 1-bit, palette and CMYK images are
      converted; 16-bit images are scaled to 8 bits (divide by 257).
    - The whole file is decoded here, so a truncated file fails now, not later.
    - Limits (``limits.py``): a file over ALEXNET_MAX_IMAGE_BYTES is not read, an
      image over ALEXNET_MAX_IMAGE_PIXELS is not decoded (:class:`ImageTooLargeError`);
      only :data:`FORMATS` are opened.
    - Animated images give their first frame.

    Raises :class:`UnreadableImageError` (an ``AlexnetError``) naming the file
    when it is missing, not an image, corrupt, truncated or too large.
    """
    name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<bytes>")
    try:
        if isinstance(path, (str, os.PathLike)):
            _check_file(path)
        else:
            _check_stream(path)
        limit = _pixel_limit()
        with Image.open(path, formats=FORMATS) as img:
            _check_pixels(name, *img.size, limit)
            img.load()
            rgb = _to_rgb(_upright(img))
            if rgb is img:
                # Closing the file below also frees `img`'s pixels: keep a copy.
                rgb = img.copy()
            rgb.load()
            return rgb
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(name, exc.reason) from None
    except AlexnetError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise _bomb(name, exc) from None
    except Exception as exc:  # noqa: BLE001 - PIL decoders raise many types on bad input
        raise UnreadableImageError(name, _reason(exc)) from exc


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """Map an image onto a ``size`` x ``size`` grid; returns uint8 ``(size, size, 3)``.

    An image that already has that size is returned unchanged. Otherwise it is
    resized (bilinear; PIL widens the filter when shrinking, so this
    antialiases) so that its shorter side is ``size``, then the centre square
    is cropped. This is the single place where arbitrary images are mapped
    onto the model's input grid. (A sliver such as 1 x 80,000 px would be
    resized to billions of pixels first: its centre square is cut out of the
    original and resized instead.)
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
        if new_w * new_h > max(width * height, IMAGE_PIXELS.default):
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        else:
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
    or XMP orientation to apply), within ALEXNET_MAX_IMAGE_PIXELS. None for anything else, anything
    libjpeg-turbo rejects, or when the two decoders disagree: PIL then decodes it, or names why it cannot."""
    if simplejpeg is None or not data.startswith(_JPEG_START) or _has_app1(data) is not False:
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
        too_big = height * width > IMAGE_PIXELS.get()
        if colourspace not in _PLAIN_COLOURSPACES or too_big or not _fast_path_agrees():
            return None
        return _decode_turbo(data)
    except (ValueError, RuntimeError, OSError):  # truncated or corrupt: PIL says why
        return None


def decode_square(data: bytes, size: int, name: str | os.PathLike[str]) -> np.ndarray:
    """The encoded bytes of an image file as ``fit_square(load_rgb(file), size)``, ~8x faster for plain
    JPEGs (12 against 103 us for a CIFAR-sized one, the same pixels). Raises
    :class:`UnreadableImageError` naming ``name`` (:class:`ImageTooLargeError` over a limit)."""
    _check_bytes(name, len(data))
    pixels = _plain_jpeg(data)
    if pixels is None:
        try:
            return fit_square(load_rgb(io.BytesIO(data)), size)
        except UnreadableImageError as exc:
            raise type(exc)(name, exc.reason) from None
    if pixels.shape[:2] == (size, size):
        return pixels
    return fit_square(Image.fromarray(pixels), size)
