"""load_rgb decodes any image to upright RGB; fit_square maps it onto the square grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data import images
from alexnet.data.images import UnreadableImageError, decode_square, fit_square, load_rgb
from alexnet.errors import AlexnetError


def save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg_loads_as_rgb(tmp_path):
    path = save(tmp_path, "a.jpg", Image.new("RGB", (12, 8), (200, 30, 40)))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (12, 8)
    assert np.abs(np.asarray(img).astype(int) - (200, 30, 40)).max() < 8


def test_exif_rotated_image_decodes_rotated(tmp_path):
    # Stored 20 wide x 10 high: left half red, right half blue; orientation 6 says
    # "rotate 90 degrees clockwise to display", so it shows 10 wide x 20 high, red on top.
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, "rotated.jpg", Image.fromarray(stored), exif=exif, quality=95)
    img = load_rgb(path)
    assert img.size == (10, 20)
    pixels = np.asarray(img).astype(int)
    assert pixels[2, 5, 0] > 200 and pixels[2, 5, 2] < 60  # top: red
    assert pixels[17, 5, 2] > 200 and pixels[17, 5, 0] < 60  # bottom: blue


def test_rgba_is_composited_onto_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent (hidden black)
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    img = load_rgb(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    pixels = np.asarray(img)
    assert img.mode == "RGB" and pixels.dtype == np.uint8
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 1]) == (255, 255, 255)
    assert abs(int(pixels[0, 2, 0]) - 127) <= 2


def test_la_image_is_composited_onto_white(tmp_path):
    la = Image.new("LA", (2, 2), (0, 0))
    pixels = np.asarray(load_rgb(save(tmp_path, "la.png", la)))
    assert pixels.shape == (2, 2, 3) and (pixels == 255).all()


def test_palette_with_transparency_is_composited_onto_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    path = save(tmp_path, "p.png", img, transparency=0)
    pixels = np.asarray(load_rgb(path))
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # transparent index -> white
    assert tuple(pixels[1, 1]) == (0, 255, 0)


def test_palette_gif_gives_rgb(tmp_path):
    img = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    out = load_rgb(save(tmp_path, "p.gif", img))
    assert out.mode == "RGB" and tuple(np.asarray(out)[0, 0]) == (0, 0, 255)


@pytest.mark.parametrize("mode, value, expected", [("L", 90, 90), ("1", 1, 255)])
def test_grey_and_one_bit_images_give_rgb(tmp_path, mode, value, expected):
    pixels = np.asarray(load_rgb(save(tmp_path, "g.png", Image.new(mode, (3, 3), value))))
    assert pixels.shape == (3, 3, 3) and pixels.dtype == np.uint8
    assert (pixels == expected).all()


def test_cmyk_jpeg_gives_rgb(tmp_path):
    path = save(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95)  # red ink
    pixels = np.asarray(load_rgb(path)).astype(int)
    assert pixels.shape == (8, 8, 3)
    assert pixels[4, 4, 0] > 200 and pixels[4, 4, 1] < 60 and pixels[4, 4, 2] < 60


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = save(tmp_path, "deep.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")  # really stored and read as 16-bit
    pixels = np.asarray(load_rgb(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 3, 3)
    assert pixels[0, :, 0].tolist() == [0, 100, 255]


def test_32_bit_integer_image_is_treated_as_16_bit(tmp_path):
    values = np.array([[-5, 257 * 7, 70000]], dtype=np.int32)
    path = save(tmp_path, "i.tif", Image.fromarray(values, "I"))
    assert load_rgb(path).getpixel((0, 0)) == (0, 0, 0)
    assert np.asarray(load_rgb(path))[0, :, 1].tolist() == [0, 7, 255]


def test_truncated_jpeg_raises_naming_the_file(tmp_path):
    good = save(tmp_path, "good.jpg", Image.effect_noise((64, 64), 60).convert("RGB"))
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UnreadableImageError) as info:
        load_rgb(bad)
    assert str(bad) in str(info.value) and info.value.reason == "truncated"
    assert "\n" not in str(info.value)


def test_non_image_file_raises_alexnet_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(AlexnetError, match="notes.jpg .not a recognised image file"):
        load_rgb(path)


def test_missing_file_raises_alexnet_error(tmp_path):
    with pytest.raises(AlexnetError, match="file not found"):
        load_rgb(tmp_path / "nope.png")


def test_an_image_over_the_pixel_limit_is_refused_naming_the_variable(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", Image.new("RGB", (40, 30)))  # 1,200 pixels
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "1199")
    with pytest.raises(AlexnetError) as info:
        load_rgb(path)
    assert str(info.value) == (f"refusing image {path}: 40x30 = 1,200 pixels, over the limit of 1,199 pixels; "
                               "set ALEXNET_MAX_IMAGE_PIXELS to raise it")
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "1200")  # at the limit: decoded
    assert load_rgb(path).size == (40, 30)


def test_unreadable_image_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(UnreadableImageError("x.jpg", "truncated")))
    assert err.path == "x.jpg" and err.reason == "truncated" and "x.jpg" in str(err)


def test_fit_square_of_40x20_image_gives_16x16_centre_crop():
    # Columns: 10 red | 20 green | 10 blue. Shrunk to 32x16 the green band covers
    # columns 8..24, exactly the centre crop: pure green inside, blended with red and blue only at the
    # edges (the antialiasing filter reaches over), the left edge the mirror image of the right.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:30] = (0, 255, 0)
    pixels[:, 30:] = (0, 0, 255)
    out = fit_square(Image.fromarray(pixels), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[:, 2:14, 1] == 255).all() and (out[:, 2:14, [0, 2]] == 0).all()
    assert (out[:, :, 1] >= 128).all() and out[:, 0, 2].max() == 0 and out[:, 15, 0].max() == 0
    np.testing.assert_array_equal(out, out[:, ::-1, ::-1])  # mirrored left-right with red and blue swapped
    assert (out == out[:1]).all()  # every row alike: the image is the same all the way down


def test_fit_square_of_tall_image_crops_vertically():
    pixels = np.zeros((30, 10, 3), np.uint8)
    pixels[10:20] = 200  # the middle third
    out = fit_square(Image.fromarray(pixels), 10)
    assert out.shape == (10, 10, 3) and (out == 200).all()


def test_fit_square_keeps_an_image_of_the_right_size_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = fit_square(Image.fromarray(pixels), 8)
    np.testing.assert_array_equal(out, pixels)
    out[0, 0] = 0  # writable, independent copy


def test_fit_square_upscales_small_images():
    out = fit_square(Image.new("RGB", (4, 2), (9, 9, 9)), 6)
    assert out.shape == (6, 6, 3) and (out == 9).all()


def test_fit_square_rejects_a_non_positive_size():
    with pytest.raises(AlexnetError, match="positive integer"):
        fit_square(Image.new("RGB", (4, 4)), 0)


# decode_square: the bulk decoder of in-memory datasets must give exactly what load_rgb + fit_square give.

def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _reference(data: bytes, size: int) -> np.ndarray:
    import io

    return fit_square(load_rgb(io.BytesIO(data)), size)


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("mode, subsampling, progressive", [
    ("RGB", 2, False),  # 4:2:0, as the shared CIFAR JPEGs
    ("RGB", 0, False),
    ("RGB", 2, True),
    ("L", 0, False),
])
def test_decode_square_of_plain_jpegs_matches_pil_exactly(mode, subsampling, progressive):
    data = _jpeg_bytes(_noise(mode, (32, 32)), quality=90, subsampling=subsampling, progressive=progressive)
    assert images._plain_jpeg(data) is not None  # the fast path really ran (simplejpeg is a dependency)
    out = decode_square(data, 32, "x.jpg")
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, _reference(data, 32))


def test_decode_square_resizes_a_jpeg_of_another_size_like_fit_square():
    data = _jpeg_bytes(_noise("RGB", (40, 24)), quality=90)
    np.testing.assert_array_equal(decode_square(data, 16, "wide.jpg"), _reference(data, 16))


def test_decode_square_leaves_exif_rotation_and_cmyk_to_pil():
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg_bytes(Image.fromarray(stored), exif=exif, quality=95)
    cmyk = _jpeg_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95)
    assert images._plain_jpeg(rotated) is None and images._plain_jpeg(cmyk) is None
    np.testing.assert_array_equal(decode_square(rotated, 10, "r.jpg"), _reference(rotated, 10))
    np.testing.assert_array_equal(decode_square(cmyk, 8, "c.jpg"), _reference(cmyk, 8))


def test_decode_square_leaves_an_xmp_orientation_to_pil():
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)
    plain = _jpeg_bytes(Image.fromarray(stored), quality=95)
    xmp = (b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
           b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
           b"xmlns:tiff='http://ns.adobe.com/tiff/1.0/' tiff:Orientation='6'/></rdf:RDF></x:xmpmeta>")
    tagged = plain[:2] + b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp + plain[2:]  # an APP1 segment
    assert images._plain_jpeg(plain) is not None and images._plain_jpeg(tagged) is None
    np.testing.assert_array_equal(decode_square(tagged, 10, "x.jpg"), _reference(tagged, 10))


def test_the_fast_path_is_checked_against_pil_once():
    assert images._fast_path_agrees()  # simplejpeg and PIL's wheels are both libjpeg-turbo


def test_decode_square_of_a_png_goes_through_pil():
    import io

    buf = io.BytesIO()
    _noise("RGB", (32, 32)).save(buf, "PNG")
    np.testing.assert_array_equal(decode_square(buf.getvalue(), 32, "p.png"), _reference(buf.getvalue(), 32))


@pytest.mark.parametrize("cut", [300, -2])
def test_decode_square_of_a_truncated_jpeg_names_it(cut):
    data = _jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))[:cut]
    with pytest.raises(UnreadableImageError) as info:
        decode_square(data, 64, "train/cat/cut.jpg")
    assert info.value.path == "train/cat/cut.jpg" and "\n" not in str(info.value)


def test_decode_square_without_simplejpeg_gives_the_same_pixels(monkeypatch):
    data = _jpeg_bytes(_noise("RGB", (32, 32), seed=3), quality=75)
    fast = decode_square(data, 32, "a.jpg")
    monkeypatch.setattr(images, "simplejpeg", None)
    images._fast_path_agrees.cache_clear()
    try:
        assert images._plain_jpeg(data) is None
        np.testing.assert_array_equal(decode_square(data, 32, "a.jpg"), fast)
    finally:
        images._fast_path_agrees.cache_clear()  # asked again once simplejpeg is back


def test_decode_square_keeps_the_pixel_limit_on_the_fast_path(monkeypatch):
    data = _jpeg_bytes(_noise("RGB", (40, 40)))
    assert images._plain_jpeg(data) is not None  # a plain JPEG: libjpeg-turbo would decode it
    monkeypatch.setenv("ALEXNET_MAX_IMAGE_PIXELS", "1599")
    with pytest.raises(AlexnetError, match="big.jpg: 40x40 = 1,600 pixels, over the limit of 1,599 pixels; "
                                           "set ALEXNET_MAX_IMAGE_PIXELS"):
        decode_square(data, 32, "big.jpg")
