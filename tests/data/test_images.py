"""open_image / image_size / check_decodes: every PIL mode to RGB, EXIF orientation, bad files."""

import warnings

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.images import check_decodes, image_size, open_image
from sam3_lora.errors import DataError

ORIENTATION = 0x0112


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_rgb_jpeg_opens_as_rgb(tmp_path):
    path = _save(Image.new("RGB", (40, 30), (200, 10, 10)), tmp_path / "a.jpg")
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert image_size(path) == (40, 30)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, mode="L")
    pixels = np.asarray(open_image(_save(gray, tmp_path / "g.png")))
    assert pixels.shape == (3, 4, 3)
    assert (pixels[..., 0] == np.asarray(gray)).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path, mode):
    # A fully transparent pixel keeps its stored colour (compositing on black would zero it).
    source = Image.new("RGBA", (4, 4), (120, 120, 120, 0)).convert(mode)
    pixels = np.asarray(open_image(_save(source, tmp_path / "t.png")))
    assert (pixels == 120).all()


def test_palette_with_transparency_opens_without_warning(tmp_path):
    palette = Image.new("P", (5, 5), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    path = _save(palette, tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = np.asarray(open_image(path))
    assert pixels.shape == (5, 5, 3) and tuple(pixels[0, 0]) == (10, 200, 30)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_scales_full_range_to_8_bit(tmp_path, suffix):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / f"deep{suffix}")
    assert Image.open(path).mode in {"I;16", "I;16B", "I"}
    pixels = np.asarray(open_image(path))[..., 0]
    assert pixels.tolist() == [[0, 1, 128, 255]]  # PIL's convert("L") would clip to 255


def test_32_bit_integer_outside_16_bits_is_stretched(tmp_path):
    values = np.array([[-1000, 0, 1000]], dtype=np.int32)
    pixels = np.asarray(open_image(_save(Image.fromarray(values), tmp_path / "i.tif")))[..., 0]
    assert pixels.tolist() == [[0, 128, 255]]


def test_float_image_is_stretched(tmp_path):
    values = np.array([[0.5, 1.0, 1.5]], dtype=np.float32)
    pixels = np.asarray(open_image(_save(Image.fromarray(values), tmp_path / "f.tif")))[..., 0]
    assert pixels.tolist() == [[0, 128, 255]]


@pytest.mark.parametrize(("mode", "suffix"), [("CMYK", ".jpg"), ("CMYK", ".tif"), ("1", ".png"),
                                              ("YCbCr", ".jpg")])
def test_other_modes_open_as_rgb(tmp_path, mode, suffix):
    source = Image.new("RGB", (8, 6), (255, 255, 255)).convert(mode)
    image = open_image(_save(source, tmp_path / f"x{suffix}"))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image).min() > 200  # white stays (nearly) white


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    # Stored 40 wide x 20 high, red in the top-left; orientation 6 = shown turned 90 deg
    # clockwise, so the viewer shows 20 x 40 with red in the top-right.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:5, :5] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = _save(Image.fromarray(stored), tmp_path / f"rot{suffix}", exif=exif)
    image = open_image(path)
    assert image.size == (20, 40) and image_size(path) == (20, 40)
    pixels = np.asarray(image)
    assert pixels[1, -2, 0] > 200 and pixels[1, 1, 0] < 50


def test_missing_file_names_the_file(tmp_path):
    for read in (open_image, image_size, check_decodes):
        with pytest.raises(DataError, match="nope.jpg"):
            read(tmp_path / "nope.jpg")


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    for read in (open_image, image_size):
        with pytest.raises(DataError, match="cannot read image .*notes.jpg"):
            read(path)


def test_truncated_jpeg_is_caught_by_decoding_not_by_header(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "cut.jpg", quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert image_size(path) == (64, 64)
    for read in (open_image, check_decodes):
        with pytest.raises(DataError, match="cut.jpg"):
            read(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path)
