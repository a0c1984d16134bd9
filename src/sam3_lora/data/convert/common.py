"""What the converters share: images waiting to be placed, annotation builders, splitting by
ratios, and writing the train/valid/test layout.

Every converter reads and checks the whole input first, then writes into a new or empty folder;
the user's files are only read (images are hard-linked when the file system allows it,
else copied, never moved). Errors are ``DataError`` lines naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.data import rle
from sam3_lora.data.images import IMAGE_SUFFIXES
from sam3_lora.data.scaffold import (
    ANNOTATION_FILE,
    SPLITS,
    LayoutSummary,
    prepare_output_dir,
    write_annotation_file,
)
from sam3_lora.errors import DataError
from sam3_lora.files import replacing_file


@dataclass
class PendingImage:
    """An image to place in an output split: where it is now and what goes in its COCO file."""

    source: Path
    file_name: str
    """Path relative to the split folder, '/'-separated."""
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    """COCO annotations; ``id``/``image_id`` are kept when present, else assigned."""
    image_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Other image fields to keep (``license``, ``date_captured``...)."""


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels as displayed, i.e. after the EXIF orientation is applied,
    which is the frame labelling tools and ``data.images.open_image`` use."""
    from sam3_lora.data.images import image_size

    return image_size(path)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted so that output order is stable."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def polygon_annotation(polygons: list[list[float]], category_id: int, width: int, height: int):
    """A COCO annotation from polygons in pixels ([x1, y1, x2, y2, ...] each).

    Coordinates are clipped to the image and rounded to 0.01 px; ``bbox`` spans the
    polygons' extent and ``area`` is the rasterised mask area, both in pixels.
    """
    clipped = []
    for polygon in polygons:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        xy = np.round(np.clip(xy, 0, [width, height]), 2)
        clipped.append(xy.ravel().tolist())
    points = np.concatenate([np.reshape(p, (-1, 2)) for p in clipped])
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    rle = mask_utils.merge(mask_utils.frPyObjects(clipped, height, width))
    bbox = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
    return _annotation(category_id, bbox, float(mask_utils.area(rle)), clipped)


def box_annotation(x: float, y: float, w: float, h: float, category_id: int, width: int,
                   height: int) -> dict[str, Any]:
    """A box-only COCO annotation (``segmentation`` []) from a pixel box clipped to the image."""
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    bbox = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
    return _annotation(category_id, bbox, round(bbox[2] * bbox[3], 3), [])


def mask_annotation(mask: np.ndarray, category_id: int) -> dict[str, Any]:
    """A COCO annotation with an RLE segmentation from a bool (height, width) mask."""
    segmentation = rle.encode(mask)
    compressed = rle.as_compressed(segmentation)
    bbox = [float(v) for v in mask_utils.toBbox(compressed)]
    return _annotation(category_id, bbox, float(mask_utils.area(compressed)), segmentation)


def _annotation(category_id: int, bbox: list[float], area: float, segmentation) -> dict:
    return {"category_id": category_id, "bbox": bbox, "area": area,
            "segmentation": segmentation, "iscrowd": 0}


def split_by_ratios(items: list, ratios: tuple[float, ...], seed: int) -> dict[str, list]:
    """Shuffle ``items`` with ``seed`` and cut them into train/valid/test by ``ratios``.

    Counts follow the largest remainder, and every split with a positive ratio gets at least
    one item when there are enough. Each split keeps the items' input order. Splits that get
    no items are left out.
    """
    ratios = _check_ratios(ratios)
    order = np.random.default_rng(seed).permutation(len(items))
    counts = _allocate(len(items), ratios)
    splits, start = {}, 0
    for split, count in zip(SPLITS, counts):
        chosen = sorted(order[start : start + count])
        start += count
        if chosen:
            splits[split] = [items[i] for i in chosen]
    return splits


def _check_ratios(ratios: tuple[float, ...]) -> tuple[float, ...]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        shown = " ".join(f"{r:g}" for r in ratios)
        raise DataError(
            f"split ratios {shown}: give three non-negative numbers (train valid test) "
            "that sum to 1, e.g. 0.8 0.1 0.1"
        )
    return tuple(ratios)


def _allocate(total: int, ratios: tuple[float, ...]) -> list[int]:
    exact = [r * total for r in ratios]
    counts = [int(v) for v in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, ratio in enumerate(ratios):  # borrow from the largest split for a starved one
        largest = max(range(len(counts)), key=lambda j: counts[j])
        if ratio > 0 and counts[i] == 0 and counts[largest] > 1:
            counts[i], counts[largest] = 1, counts[largest] - 1
    return counts


def place_image(source: Path, destination: Path, link: bool, inside: Path | None = None) -> None:
    """Hard-link ``source`` to ``destination`` when allowed (same file system), else copy.

    The name ``destination`` is replaced, never written through: a symlink planted there is
    replaced and its target left alone. A folder on the way that is a link leading out of
    ``inside`` (default: ``destination``'s folder) is refused before anything is created."""
    _check_no_link_out(destination.parent, Path(inside or destination.parent))
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            _link_replacing(source, destination)
            return
        except OSError:
            pass  # another file system, or links unsupported: copying is always correct
    with replacing_file(destination) as temporary:
        shutil.copyfile(source, temporary)


def _link_replacing(source: Path, destination: Path) -> None:
    """Hard-link ``source`` under a temporary name, then rename it onto ``destination``."""
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    os.link(source, temporary)
    try:
        os.replace(temporary, destination)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _check_no_link_out(folder: Path, inside: Path) -> None:
    """``DataError`` when the deepest existing part of ``folder`` resolves outside ``inside``
    (a symbolic link planted in the output folder)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path("."))
    if not existing.resolve().is_relative_to(inside.resolve()):
        raise DataError(f"{folder}: leads outside {inside} through a symbolic link; outputs are "
                        "never written through links: remove it and run again")


def write_layout(out_dir: str | Path, splits: dict[str, list[PendingImage]],
                 categories: list[dict[str, Any]], *, link: bool = True,
                 info: dict[str, Any] | None = None) -> LayoutSummary:
    """Write each split's images and COCO file. Image ids default to 1..N per split and
    annotation ids to a running count; ids given in the records are kept."""
    for split, images in splits.items():
        _check_unique_names(split, images)
    out = prepare_output_dir(out_dir)
    summary = LayoutSummary(out, num_categories=len(categories))
    for split, images in splits.items():
        (out / split).mkdir()
        coco_images, annotations = [], []
        given_ids = [a["id"] for i in images for a in i.annotations if isinstance(a.get("id"), int)]
        next_id = max(given_ids, default=0) + 1  # new ids never collide with kept ones
        for index, image in enumerate(images):
            image_id = image.image_id if image.image_id is not None else index + 1
            place_image(image.source, out / split / image.file_name, link, inside=out / split)
            coco_images.append({"id": image_id, "file_name": image.file_name,
                                "width": image.width, "height": image.height, **image.extra})
            for annotation in image.annotations:
                annotation_id = annotation.get("id")
                if not isinstance(annotation_id, int):
                    annotation_id, next_id = next_id, next_id + 1
                rest = {k: v for k, v in annotation.items() if k not in ("id", "image_id")}
                annotations.append({"id": annotation_id, "image_id": image_id, **rest})
        write_annotation_file(out / split / ANNOTATION_FILE, coco_images, annotations,
                              categories, info)
        summary.add_split(split, len(coco_images), len(annotations))
    return summary


def _check_unique_names(split: str, images: list[PendingImage]) -> None:
    seen: dict[str, Path] = {}
    for image in images:
        name = PurePosixPath(image.file_name)
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise DataError(f"{image.source}: output name {image.file_name!r} leads outside the "
                            f"split folder {split}/; give a path relative to it, without '..'")
        if image.file_name in seen:
            raise DataError(
                f"{image.source}: same output name {image.file_name!r} as {seen[image.file_name]}"
                f" in split {split}; rename one of the two images"
            )
        seen[image.file_name] = image.source


def read_text(path: Path) -> str:
    """A text file's content (UTF-8, a leading BOM ignored), or a one-line ``DataError``."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); check the path") from None


def read_json(path: Path) -> Any:
    """Parsed JSON, or a ``DataError`` naming the line of the syntax error."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix the syntax") from None
