"""Image files in, overlay and JSON files out: which images a ``predict`` request names and
where each one's outputs go, checked before any model loads. Torch-free (the ONNX engine's
``predict --onnx`` uses it too).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from sam3_lora.data.images import IMAGE_SUFFIXES, UnreadableImage, open_image
from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import check_output


class PredictInputError(Sam3LoraError):
    """Images or output paths that cannot be used."""


def find_images(spec: str) -> list[Path]:
    """A file, a folder (its images, sorted) or a glob -> image paths."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        found = [path]
    else:
        found = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise PredictInputError(f"{spec}: no image found; give a file, a folder of images or a glob", option="image")
    return found


def output_paths(images: list[Path], output: str) -> list[tuple[Path, Path]]:
    """(overlay PNG, JSON) per image: a .png path for one image, else a folder. Checked
    before any work: a path that names a file where a folder is needed, or that cannot be
    written, is refused here, not after the model has loaded."""
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix in IMAGE_SUFFIXES | {".json"} and (len(images) > 1 or suffix != ".png"):
        reason = (f"a file name, but there are {len(images)} images" if len(images) > 1
                  else "overlays are written as PNG")
        raise PredictInputError(f"{out}: {reason}; give {'a folder' if len(images) > 1 else 'a .png path or a folder'}",
                                option="output")
    if len(images) == 1 and suffix == ".png":
        pairs = [(check_output(out, folder=False, what="output"), out.with_suffix(".json"))]
        check_output(pairs[0][1], folder=False, what="output")
    else:
        if out.exists() and not out.is_dir():
            raise PredictInputError(f"{out}: is a file; give a folder for several images", option="output")
        check_output(out, folder=True, what="output")
        pairs = [(out / f"{image.stem}.png", out / f"{image.stem}.json") for image in images]
    inputs = {image.resolve() for image in images}
    for png, _ in pairs:
        if png.resolve() in inputs:
            raise PredictInputError(f"{png}: is an input image; choose another path (inputs are never overwritten)",
                                    option="output")
    return pairs


def readable_images(images: list[Path], skipped: list[UnreadableImage], *, strict: bool = False
                    ) -> Iterator[tuple[int, Path, Image.Image]]:
    """(index in ``images``, path, RGB picture) of each image that can be read. One that
    cannot is appended to ``skipped`` and passed over (see ``skipped_line``), or, ``strict``,
    stops the request with one line. Nothing readable at all is an error either way."""
    read = 0
    for index, path in enumerate(images):
        try:
            picture = open_image(path)
        except UnreadableImage as error:
            if strict:
                raise PredictInputError(f"cannot read image {error.path}: {error.reason}; replace or remove it, "
                                        f"or leave strict off to skip such images", option="strict") from None
            skipped.append(error)
            continue
        read += 1
        yield index, path, picture
    if not read:
        first = skipped[0]
        raise PredictInputError(f"no image could be read ({len(skipped)} tried): first: {first.path} "
                                f"({first.reason}); give images PIL can decode")


def skipped_line(skipped: list[UnreadableImage]) -> str | None:
    """``skipped N unreadable images: first: PATH (reason)``, or None when none was."""
    if not skipped:
        return None
    first = skipped[0]
    count = f"{len(skipped)} unreadable image{'s' * (len(skipped) != 1)}"
    return f"skipped {count}: first: {first.path} ({first.reason})"
