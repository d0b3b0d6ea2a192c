"""Hostile image files: each one decodes to a defined RGB uint8 image or gives one AlexnetError line.

Training folders, in-memory archives, `alexnet predict` and the service all decode through `load_rgb`
(paths and file objects) or `decode_square` (bytes), so both are held to it here.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.data.images import ImageTooLargeError, UnreadableImageError, decode_square, fit_square, load_rgb
from alexnet.errors import AlexnetError


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, raw_rows: bytes, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG written by hand (valid CRCs): it may declare any size, whatever its data holds."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw_rows))
            + png_chunk(b"IEND", b""))


def one_line_error(exc: BaseException, name: str) -> None:
    text = str(exc)
    assert isinstance(exc, AlexnetError) and "\n" not in text and name in text, text


# --- pixel bombs: refused from the header, before a pixel is decoded ----------------------------------


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000)],
                         ids=["far-over-pillows-limit", "between-pillows-warning-and-its-error"])
def test_a_small_png_declaring_huge_dimensions_is_refused(tmp_path, width, height):
    bomb = png(width, height, b"\0" * 64)
    assert len(bomb) < 200
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    pixels = f"{width * height:,} pixels, over the limit of 89,478,485 pixels; set ALEXNET_MAX_IMAGE_PIXELS to raise it"
    with pytest.raises(ImageTooLargeError) as info:
        load_rgb(path)
    assert str(info.value) == f"refusing image {path}: {width}x{height} = {pixels}" or \
        str(info.value) == f"refusing image {path}: {pixels}"  # Pillow's own refusal says no width x height
    with pytest.raises(ImageTooLargeError, match=f"train/cat/bomb.png: .*{pixels}"):
        decode_square(bomb, 32, "train/cat/bomb.png")


def test_pillows_own_threshold_follows_the_limit_up(tmp_path, monkeypatch):
    # Pillow's decompression-bomb warning is an error here: were its own threshold left below the limit in
    # force, it would refuse images the limit allows.
    import warnings

    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if Pillow's threshold were 1,000 pixels
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "5000")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert np.asarray(load_rgb(path))[0, 0].tolist() == [1, 2, 3]
    assert Image.MAX_IMAGE_PIXELS == 5000


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    size = path.stat().st_size
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_BYTES", str(size - 1))
    with pytest.raises(ImageTooLargeError) as info:
        load_rgb(path)
    assert str(info.value) == (f"refusing image {path}: the file holds {size:,} bytes, over the limit of "
                               f"{size - 1:,} bytes; set ALEXNET_MAX_IMAGE_BYTES to raise it")
    with pytest.raises(ImageTooLargeError, match="ALEXNET_MAX_IMAGE_BYTES"):
        decode_square(path.read_bytes(), 8, "big.png")
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_BYTES", str(size))
    assert load_rgb(path).size == (40, 40)


def test_a_malformed_limit_is_one_error_naming_the_variable(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(AlexnetError, match="ALEXNET_MAX_IMAGE_PIXELS='lots' is not a positive whole number"):
        load_rgb(path)
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "16")  # 4 x 4: exactly at the limit
    assert load_rgb(path).size == (4, 4)
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_BYTES", "1K")  # binary suffixes: 1,024 bytes
    assert load_rgb(path).size == (4, 4)


# --- broken or disguised files: one line naming the file ------------------------------------------


def test_empty_text_and_truncated_files_are_named(tmp_path):
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    jpeg, pic = io.BytesIO(), io.BytesIO()
    noise.save(jpeg, "JPEG")
    noise.save(pic, "PNG")
    files = {"empty.jpg": b"", "notes.jpg": b"a text file named like a picture\n",
             "cut.jpg": jpeg.getvalue()[:400], "cut.png": pic.getvalue()[: len(pic.getvalue()) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImageError) as info:
            load_rgb(tmp_path / name)
        one_line_error(info.value, str(tmp_path / name))
        with pytest.raises(UnreadableImageError) as info:
            decode_square(data, 16, f"archive.tar.gz:train/cat/{name}")
        one_line_error(info.value, f"archive.tar.gz:train/cat/{name}")


def test_a_format_outside_the_accepted_ones_is_refused_whatever_its_name(tmp_path):
    for fmt in ("ICO", "PCX", "TGA"):
        path = tmp_path / f"disguised-{fmt}.jpg"
        Image.new("RGB", (16, 16), (9, 9, 9)).save(path, fmt)
        with Image.open(path) as im:
            assert im.format == fmt  # Pillow itself would open it
        with pytest.raises(UnreadableImageError, match="not a recognised image file; accepted formats: JPEG"):
            load_rgb(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(UnreadableImageError, match="pipe.jpg .not a regular file"):
        load_rgb(fifo)


# --- unusual but valid images: a defined RGB picture -----------------------------------------------


def test_sixteen_bit_rgb_png_keeps_the_high_byte_of_each_sample():
    # one pixel of 16-bit samples 0x1234, 0xABCD, 0xFFFF (filter byte 0 first)
    data = png(1, 1, b"\0" + struct.pack(">HHH", 0x1234, 0xABCD, 0xFFFF), depth=16, colour=2)
    assert load_rgb(io.BytesIO(data)).getpixel((0, 0)) == (0x12, 0xAB, 0xFF)


def test_cmyk_tiff_gives_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(buf, "TIFF")  # full magenta + yellow ink: red
    assert np.asarray(load_rgb(buf))[1, 1].tolist() == [255, 0, 0]


def test_gif_with_a_transparent_index_is_white_where_transparent():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    buf = io.BytesIO()
    img.save(buf, "GIF", transparency=0)
    assert np.asarray(load_rgb(buf)).tolist() == [[[255, 255, 255], [10, 200, 30]]]


@pytest.mark.parametrize("fmt, extra", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_an_animated_image_gives_its_first_frame(fmt, extra):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.n_frames == 3
    assert (np.asarray(load_rgb(io.BytesIO(buf.getvalue()))) == (255, 0, 0)).all()


def test_a_one_pixel_high_sliver_is_fitted_from_its_centre_without_billions_of_pixels():
    # 3,000,000 x 1: resized to a shorter side of 32 first, it would be 96,000,000 x 32 pixels (9 GB);
    # its centre square is what the model gets. Left third red, the rest green: the centre is green.
    pixels = np.zeros((1, 3_000_000, 3), np.uint8)
    pixels[:, :1_000_000] = (255, 0, 0)
    pixels[:, 1_000_000:] = (0, 255, 0)
    out = fit_square(Image.fromarray(pixels), 32)
    assert out.shape == (32, 32, 3) and (out == (0, 255, 0)).all()


# --- random damage to valid files (fuzzing): never another exception ---------------------------------


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    out = {}
    for fmt, options in (("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("WEBP", {"quality": 80}),
                         ("TIFF", {"compression": "tiff_lzw"})):
        buf = io.BytesIO()
        noise.save(buf, fmt, **options)
        out[fmt] = buf.getvalue()
    return out


SEEDS = _seed_files()


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    for _ in range(draw(st.integers(1, 6))):  # overwrite a few bytes, headers included
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # and maybe cut it short
    return fmt, bytes(data)


def test_a_sliver_gets_the_streamed_centre_view_without_a_giant_resize():
    # Shorter side to 256 would make a 1 x 3,000,000 px strip 256 x 768,000,000; the view is cut first.
    from alexnet.data.prepare import centre_view

    strip = np.zeros((1, 3_000_000, 3), dtype=np.uint8)
    strip[0, 1_499_000:1_501_000] = (250, 20, 40)  # the centre 2,000 px are red, the rest black
    view = centre_view(Image.fromarray(strip), 224, 256)
    assert view.shape == (224, 224, 3)
    # The centre square of the resized strip spans 224/256 of one source pixel's height and ~0.9 px of
    # its width around the middle: all red.
    assert (view == np.array([250, 20, 40], dtype=np.uint8)).all()


@settings(derandomize=True, max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_randomly_damaged_files_decode_or_give_one_error_line(case):
    fmt, data = case
    name = f"fuzz.{fmt.lower()}"
    try:
        out = decode_square(data, 16, name)
    except AlexnetError as exc:
        one_line_error(exc, name)
    else:
        assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    try:
        img = load_rgb(io.BytesIO(data))
    except AlexnetError as exc:
        assert "\n" not in str(exc)
    else:
        assert img.mode == "RGB" and np.asarray(img).dtype == np.uint8


def test_the_fuzzing_seeds_are_valid_images_of_each_format():
    for fmt, data in SEEDS.items():
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == fmt
        assert decode_square(data, 16, f"seed.{fmt}").shape == (16, 16, 3)
