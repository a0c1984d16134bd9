"""COCO ``images`` entries into ``ImageRecord``s: ids, safe paths, the files themselves.

Rules (error = the image and its annotations are left out; warning = kept) are listed in
``data.coco.split``'s docstring. A ``file_name`` that is absolute or climbs out with ``..`` is refused
before any file system call, so an annotation file can never make the reader open, or even
test the existence of, a path outside its split folder. Symbolic links inside the folder are
followed: they were made by the dataset's owner.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from sam3_lora.data.coco.fields import (
    Findings,
    Invalid,
    Reporter,
    describe,
    get_id,
    get_id_list,
    get_size,
    get_text,
)
from sam3_lora.data.images import MAX_PIXELS, check_decodes, image_size
from sam3_lora.data.records import ImageRecord
from sam3_lora.errors import DataError
from sam3_lora.files import is_inside

LVIS_LIST_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def parse_images(entries: list, root: Path, category_ids: set[int], findings: Findings,
                 full_decode: bool = False) -> tuple[dict[int, ImageRecord], set[int]]:
    """``images`` entries -> (usable images by id, every image id the file lists).

    ``full_decode`` decodes every pixel (catches files cut off after their header); without
    it only headers are read.
    """
    ids = [_entry_id(entry, index, findings) for index, entry in enumerate(entries)]
    duplicated = _report_duplicate_ids(entries, ids, findings)
    images: dict[int, ImageRecord] = {}
    for entry, image_id in zip(entries, ids):
        if image_id is None or image_id in duplicated:
            continue
        image = _parse_image(entry, image_id, root, category_ids, findings, full_decode)
        if image is not None:
            images[image_id] = image
    _report_shared_files(images.values(), findings)
    return images, {image_id for image_id in ids if image_id is not None}


def _entry_id(entry: Any, index: int, findings: Findings) -> int | None:
    say = findings.about(f"images[{index}]")
    if not isinstance(entry, dict):
        say.error("wrong_type", f"is {describe(entry)}, not an object; remove it")
        return None
    image_id = get_id(entry, "id")
    if isinstance(image_id, Invalid):
        say.invalid(image_id, "give every image a unique integer id")
        return None
    return image_id


def _report_duplicate_ids(entries: list, ids: list[int | None], findings: Findings) -> set[int]:
    """Ids listed more than once. Every entry with such an id is left out: which image its
    annotations belong to cannot be known."""
    counts = Counter(image_id for image_id in ids if image_id is not None)
    duplicated = {image_id for image_id, count in counts.items() if count > 1}
    for image_id in sorted(duplicated):
        names = [describe(entry.get("file_name")) for entry, other in zip(entries, ids)
                 if other == image_id]
        findings.about(f"image id {image_id}", image_id=image_id).error(
            "duplicate_image_id", f"{len(names)} images share this id ({', '.join(names)}); "
            "all are left out with their annotations; give each image its own id")
    return duplicated


def _parse_image(entry: dict, image_id: int, root: Path, category_ids: set[int],
                 findings: Findings, full_decode: bool) -> ImageRecord | None:
    say = findings.about(f"image id {image_id}", image_id=image_id)
    file_name = get_text(entry, "file_name")
    if isinstance(file_name, Invalid):
        say.invalid(file_name, "set it to the image's path relative to the split folder")
        return None
    say.where = f"image id {image_id} ({file_name})"
    if not is_inside(file_name):
        say.error("unsafe_path", "file_name points outside the split folder (absolute path or "
                  "'..'); refused, not opened; put the image in the folder and use a relative "
                  "file_name")
        return None
    path = root / file_name
    size = _actual_size(path, say, full_decode)
    if size is None:
        return None
    _compare_sizes(entry, size, say)
    negatives, not_exhaustive = (_category_list(entry, key, category_ids, say)
                                 for key in LVIS_LIST_KEYS)
    return ImageRecord(id=image_id, file_name=file_name, path=path, width=size[0],
                       height=size[1], neg_category_ids=negatives,
                       not_exhaustive_category_ids=not_exhaustive)


def _actual_size(path: Path, say: Reporter, full_decode: bool) -> tuple[int, int] | None:
    """(width, height) of the file as shown, or None with a missing/unreadable/too-large error."""
    if not os.path.isfile(path):  # unlike Path.is_file, never raises (too-long names)
        say.error("missing_image", f"no file at {path}; add the image or remove its entry "
                  "(and its annotations)")
        return None
    try:
        size = image_size(path)
        if size[0] * size[1] > MAX_PIXELS:   # from the header: never decoded
            say.error("image_too_large", f"{size[0]} x {size[1]} is {size[0] * size[1] / 1e6:.1f} "
                      f"MP, over the {MAX_PIXELS / 1e6:g} MP limit; downscale the image (and its "
                      "annotations) or leave it out", file=str(path))
            return None
        if full_decode:
            check_decodes(path)
    except DataError as error:
        say.error("unreadable_image", str(error), file=str(path))
        return None
    return size


def _compare_sizes(entry: dict, actual: tuple[int, int], say: Reporter) -> None:
    """Warn when the JSON's width/height are absent, malformed or not the file's."""
    stated = [get_size(entry, key) for key in ("width", "height")]
    invalid = [value for value in stated if isinstance(value, Invalid)]
    if invalid:
        say.invalid(invalid[0], f"the file's size {actual[0]} x {actual[1]} is used", "warning")
        return
    if tuple(stated) == actual:
        return
    hint = (" (swapped: EXIF orientation? sizes here are after applying it)"
            if tuple(stated) == actual[::-1] else "")
    say.warning("image_size_mismatch", f"JSON says {stated[0]} x {stated[1]} but the file is "
                f"{actual[0]} x {actual[1]}{hint}; the file's size is used - check that the "
                "annotations match the file")


def _category_list(entry: dict, key: str, category_ids: set[int], say: Reporter) -> list[int]:
    """An LVIS per-image category list, keeping only known category ids."""
    ids = get_id_list(entry, key)
    if ids is None:
        return []
    if isinstance(ids, Invalid):
        say.invalid(ids, "ignored", "warning")
        return []
    unknown = sorted(set(ids) - category_ids)
    if unknown:
        say.warning("unknown_category", f"'{key}' lists ids {unknown[:10]} not in "
                    "'categories'; they are ignored")
    return [category_id for category_id in ids if category_id in category_ids]


def _report_shared_files(images: Any, findings: Findings) -> None:
    """Warn about one file listed under several ids: each entry sees only its own objects,
    so the others' objects would be taught as background."""
    by_file: dict[str, list[int]] = {}
    for image in images:
        by_file.setdefault(image.file_name, []).append(image.id)
    for file_name, image_ids in by_file.items():
        if len(image_ids) > 1:
            findings.about(f"file {file_name}", image_id=image_ids[0]).warning(
                "duplicate_file_name", f"listed by image ids {image_ids}; merge them into one "
                "image entry so every object of the file is on it")
