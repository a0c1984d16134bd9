"""Dataset images as 8-bit RGB, whatever mode and orientation they were saved in.

Conventions every reader of dataset images follows (the COCO checks, the dataset, eval):

- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so pixels and sizes are
  those an image viewer shows; annotations are taken to be in that frame (Roboflow's
  "auto-orient" bakes the rotation in the same way).
- Alpha is dropped, not composited: RGBA/LA/PA keep their colour channels as stored. This is
  what ``Image.convert("RGB")`` does, which the inference path (``model.processing``) uses, so
  training and serving see the same pixels for the same file.
- 16-bit grayscale (``I;16``, ``I;16B``, ...) maps 0..65535 linearly onto 0..255, so relative
  brightness is kept across images (PIL's own ``convert`` would clip everything above 255).
  32-bit integer ``I`` images are treated the same when their values fit 0..65535 (how PIL
  opens 16-bit PNGs and TIFFs); otherwise, and for float ``F`` images, which have no fixed
  range, each image is stretched from its own min..max onto 0..255.
- Palette, grayscale, bilevel, CMYK, YCbCr, LAB and HSV use PIL's own conversion to RGB
  (palette images through RGBA, so transparency in the palette is handled without warnings).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sam3_lora.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) taken for images wherever a folder is searched for them."""
MAX_PIXELS = 25_000_000
"""Largest image, width x height, that is trained on, validated or served (25 MP: a 6000 x 4000
photo). Masks are kept at image size and a 100 MP image decodes to 300 MB, so this bounds the
memory one image takes; the app refuses larger uploads (``serve.limits``), ``data validate``
and training larger dataset images (``image_too_large``)."""
_ORIENTATION_TAG = 0x0112
# EXIF orientations 5-8 rotate by 90 degrees, so the shown width is the stored height.
_QUARTER_TURN_ORIENTATIONS = {5, 6, 7, 8}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_MAX_16_BIT = 65535


class UnreadableImage(DataError):
    """An image file that is missing or cannot be decoded. Its message advises a dataset's
    owner; ``path`` and ``reason`` let a caller without an annotation file (``predict``)
    word its own."""

    def __init__(self, message: str, path: Path, reason: str):
        super().__init__(message)
        self.path, self.reason = path, reason


def open_image(path: str | Path) -> Image.Image:
    """Decode the image at ``path`` into an RGB image (H x W x 3, 8 bits per channel).

    EXIF orientation is applied. Raises ``DataError`` naming the file when it is missing or
    PIL cannot decode it (unknown format, truncated data, too many pixels).
    """
    return _decode(Path(path), None)[0]


def open_image_reduced(path: str | Path, min_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """``open_image``, decoded at a reduced scale where the format allows it, and the
    (width, height) of the full image as shown (what annotations are measured in).

    A JPEG is decoded by DCT scaling (PIL ``draft``: 1/2, 1/4 or 1/8 of each side) to the
    smallest size whose sides both stay >= ``min_side``, at a fraction of a full decode: a
    4000 x 3000 phone photo for 112 px training decodes at 500 x 375. The caller resizes it
    as it would the full image. Other formats are decoded in full.
    """
    return _decode(Path(path), min_side)


def _decode(path: Path, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, full (width, height) as shown); see ``open_image_reduced``."""
    with _opened(path) as image:
        try:
            stored = image.size
            if min_side is not None and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            decoded = image.size
            image.load()
            rgb = to_rgb(upright(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise _unreadable(path, error) from None
    turned = rgb.size != decoded   # a quarter-turn EXIF orientation swapped the sides
    return rgb, (stored[::-1] if turned else stored)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels of the image at ``path`` as shown, i.e. after EXIF orientation.

    Reads only the header (no pixel decoding), so it is cheap enough to call on every image
    of a dataset. For PNGs, an EXIF block stored after the pixel data is not seen here (PIL
    only finds it by decoding); such files are rare.
    """
    path = Path(path)
    with _opened(path) as image:
        width, height = image.size
        if _orientation_from_header(image) in _QUARTER_TURN_ORIENTATIONS:
            width, height = height, width
    return width, height


def check_decodes(path: str | Path) -> None:
    """Decode every byte of the image at ``path``; raise ``DataError`` if that fails.

    Catches files that are cut off after a valid header, which ``image_size`` cannot see.
    JPEGs are decoded at reduced scale (``draft``): the whole compressed stream is still read,
    at a fraction of the cost.
    """
    path = Path(path)
    with _opened(path) as image:
        try:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise _unreadable(path, error) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> mode ``RGB`` following the conventions in the module docstring."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"I", "F"}:
        return Image.fromarray(_high_depth_to_uint8(image), mode="L").convert("RGB")
    if image.mode == "P":
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale image -> H x W uint8 array."""
    values = np.asarray(image).astype(np.float64)
    if image.mode in _SIXTEEN_BIT_MODES or _fits_16_bits(image, values):
        scaled = values * (255.0 / _MAX_16_BIT)
    else:
        scaled = _stretch_to_byte_range(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _fits_16_bits(image: Image.Image, values: np.ndarray) -> bool:
    return image.mode == "I" and values.size > 0 and values.min() >= 0 and values.max() <= _MAX_16_BIT


def _stretch_to_byte_range(values: np.ndarray) -> np.ndarray:
    """Map the finite min..max of ``values`` onto 0..255; NaN becomes 0, constant images 0."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    stretched = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return stretched * 255.0


def upright(image: Image.Image) -> Image.Image:
    """The image rotated/flipped as its EXIF orientation says (unchanged if it has none)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        # PIL's EXIF parser raises many exception types on corrupt tags; a broken tag should
        # not make an otherwise fine image unusable, so it is treated as "no orientation".
        # A copy, because the caller closes the file-backed original.
        return image.copy()


def _orientation_from_header(image: Image.Image) -> int:
    """EXIF orientation (1-8, 1 = upright) without decoding pixels."""
    # PngImageFile.getexif decodes the whole image when the eXIf chunk was not in the header.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - corrupt EXIF: same policy as upright
        return 1
    return orientation if isinstance(orientation, int) else 1


class _opened:
    """Context manager: ``Image.open(path)`` with every failure turned into a ``DataError``."""

    def __init__(self, path: Path):
        self.path = path
        self.image: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        if not os.path.isfile(self.path):  # unlike Path.is_file, never raises
            raise UnreadableImage(
                f"image file not found: {self.path}; add the file or fix its file_name in the "
                "annotation file", self.path, "no such file"
            )
        try:
            # Above Image.MAX_IMAGE_PIXELS PIL only warns; at twice that it refuses the file.
            self.image = Image.open(self.path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise _unreadable(self.path, error) from None
        return self.image

    def __exit__(self, *exc_info) -> None:
        if self.image is not None:
            self.image.close()


def _unreadable(path: Path, error: BaseException) -> UnreadableImage:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = reason.replace(f" '{path}'", "").replace(str(path), "the file")  # named once
    return UnreadableImage(
        f"cannot read image {path}: {reason}; re-export or replace the file, or remove it "
        "from the annotation file", path, reason
    )
