"""Per-image JSON labels (LabelMe format) -> COCO layout.

``SRC`` holds images and, beside each labelled image, a ``.json`` file (searched
recursively). Accepted schema, all coordinates in pixels from the image's top-left::

    {
      "imagePath": "img001.jpg",   # relative to the JSON's folder; when absent or not found,
                                   # the image beside the JSON with the same stem is used
      "imageWidth": 640,           # optional; when given, must match the image
      "imageHeight": 480,          # optional; when given, must match the image
      "shapes": [
        {"label": "crack", "points": [[x, y], ...], "shape_type": "polygon",
         "group_id": null}
      ]
    }

``shape_type``:

- ``polygon`` (the default when absent): 3+ points, a mask.
- ``rectangle``: 2 opposite corners, a box-only object (no mask is invented for it).
- ``circle``: centre and a point on the rim, a mask (64-gon).
- ``mask``: 2 corners [x1, y1], [x2, y2] of a crop and ``"mask"``, a base64 PNG of that crop
  (non-zero = object), a mask.
- ``point``, ``points``, ``line``, ``linestrip``: not objects; skipped and counted.

Polygon and circle shapes sharing a label and a non-null ``group_id`` form one object
(LabelMe's way to label an object cut in parts by an occluder). Categories are the labels
in sorted order, ids from 1. Images with no JSON are skipped (counted in the summary): in
LabelMe an image without its file is one nobody labelled yet, not a verified negative.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from sam3_lora.data.convert.common import (
    PendingImage,
    box_annotation,
    list_images,
    mask_annotation,
    polygon_annotation,
    read_image_size,
    read_json,
    split_by_ratios,
    write_layout,
)
from sam3_lora.data.scaffold import LayoutSummary, category_list, check_output_dir
from sam3_lora.errors import DataError

_SKIPPED_TYPES = ("point", "points", "line", "linestrip")
_CIRCLE_VERTICES = 64


def convert_labelme(source: str | Path, out_dir: str | Path, *,
                    split_ratios: tuple[float, float, float] | None = None, seed: int = 0,
                    link: bool = True) -> LayoutSummary:
    """Convert a folder of LabelMe-labelled images into the COCO layout at ``out_dir``.

    Without ``split_ratios`` everything goes to ``train``; with them, images are shuffled with
    ``seed`` and cut into train/valid/test.
    """
    check_output_dir(out_dir)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder holding images and their JSON")
    documents = [(path, read_json(path)) for path in sorted(root.rglob("*.json"))]
    labels = sorted({_label(shape, path, i) for path, document in documents
                     for i, shape in enumerate(_shapes(document, path))})
    category_ids = {label: i for i, label in enumerate(labels, 1)}
    images, skipped_shapes = [], 0
    for path, document in documents:
        image, skipped = _read_document(path, document, root, category_ids)
        images.append(image)
        skipped_shapes += skipped
    labelled = {image.source.resolve() for image in images}
    unlabelled = sum(1 for p in list_images(root) if p.resolve() not in labelled)
    splits = {"train": images} if split_ratios is None else split_by_ratios(
        images, split_ratios, seed)
    info = {"description": f"converted by sam3-lora from LabelMe files in {root}"}
    summary = write_layout(out_dir, splits, category_list(labels), link=link, info=info)
    if unlabelled:
        summary.notes.append(f"{unlabelled} images without JSON skipped")
    if skipped_shapes:
        summary.notes.append(f"{skipped_shapes} point/line shapes skipped")
    return summary


def _shapes(document: Any, path: Path) -> list[dict]:
    shapes = document.get("shapes") if isinstance(document, dict) else None
    if not isinstance(shapes, list) or not all(isinstance(s, dict) for s in shapes):
        raise DataError(
            f"{path}: not a LabelMe file (field 'shapes' must be a list of objects); "
            "fix it or move it out of the source folder"
        )
    return shapes


def _label(shape: dict, path: Path, index: int) -> str:
    label = shape.get("label")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{path}: shapes[{index}] field 'label' is empty; name the object")
    return label.strip()


def _read_document(path: Path, document: dict, root: Path,
                   category_ids: dict[str, int]) -> tuple[PendingImage, int]:
    """The image of one JSON with its annotations, and how many shapes were skipped."""
    image_path = _find_image(path, document, root)
    width, height = read_image_size(image_path)
    for field, actual in (("imageWidth", width), ("imageHeight", height)):
        stated = document.get(field)
        if stated is not None and stated != actual:
            raise DataError(
                f"{path}: field '{field}' is {stated} but {image_path.name} measures {actual} px;"
                " re-save the labels for this image or fix the field"
            )
    annotations, groups, skipped = [], {}, 0
    for index, shape in enumerate(document["shapes"]):
        category_id = category_ids[_label(shape, path, index)]
        kind = shape.get("shape_type") or "polygon"
        where = f"{path}: shapes[{index}] ({kind})"
        if kind in _SKIPPED_TYPES:
            skipped += 1
        elif kind in ("polygon", "circle"):
            polygon = _polygon(kind, _points(shape, where), where)
            key = (category_id, shape.get("group_id"))
            if key[1] is None:
                annotations.append(polygon_annotation([polygon], category_id, width, height))
            else:
                groups.setdefault(key, []).append(polygon)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = _exactly(_points(shape, where), 2, where)
            box = (min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
            annotations.append(box_annotation(*box, category_id, width, height))
        elif kind == "mask":
            mask = _decode_mask(shape, _exactly(_points(shape, where), 2, where), where, width,
                                height)
            annotations.append(mask_annotation(mask, category_id))
        else:
            raise DataError(f"{where}: unknown shape_type; use polygon, rectangle, circle or mask")
    for (category_id, _), polygons in groups.items():
        annotations.append(polygon_annotation(polygons, category_id, width, height))
    name = Path(os.path.abspath(image_path)).relative_to(os.path.abspath(root)).as_posix()
    return PendingImage(image_path, name, width, height, annotations), skipped


def _find_image(path: Path, document: dict, root: Path) -> Path:
    """The image ``path`` labels: its ``imagePath`` (relative to the JSON's folder), else the
    file beside the JSON with its stem. An ``imagePath`` leading outside ``root`` (``..``
    parts, an absolute path) is refused: it would pull any file into the dataset, and its
    name would lead the output outside OUT."""
    stated = document.get("imagePath")
    if isinstance(stated, str) and stated:
        candidate = Path(os.path.normpath(path.parent / PurePosixPath(stated.replace("\\", "/"))))
        if not Path(os.path.abspath(candidate)).is_relative_to(os.path.abspath(root)):
            raise DataError(
                f"{path}: field 'imagePath' {stated!r} leads outside {root}; keep the images "
                "inside the source folder and give their path relative to the JSON"
            )
        if candidate.is_file():
            return candidate
    for candidate in sorted(path.parent.glob(f"{path.stem}.*")):
        if candidate != path and candidate.suffix.lower() != ".json":
            return candidate
    raise DataError(
        f"{path}: image {stated!r} not found beside the JSON; put the image there or fix "
        "'imagePath'"
    )


def _points(shape: dict, where: str) -> list[tuple[float, float]]:
    points = shape.get("points")
    try:
        pairs = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        pairs = []
    if not pairs or not all(math.isfinite(v) for pair in pairs for v in pair):
        raise DataError(f"{where}: field 'points' must be a list of [x, y] numbers; fix it")
    return pairs


def _exactly(points: list, count: int, where: str) -> list:
    if len(points) != count:
        raise DataError(f"{where}: needs exactly {count} points, has {len(points)}; fix it")
    return points


def _polygon(kind: str, points: list[tuple[float, float]], where: str) -> list[float]:
    """Flat [x1, y1, ...] pixels: the points of a polygon, or a circle's outline."""
    if kind == "circle":
        (cx, cy), (rx, ry) = _exactly(points, 2, where)
        radius = math.hypot(rx - cx, ry - cy)
        theta = np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
        points = list(zip(cx + radius * np.cos(theta), cy + radius * np.sin(theta)))
    if len(points) < 3:
        raise DataError(f"{where}: a polygon needs at least 3 points; add points or delete it")
    return [float(v) for point in points for v in point]


def _decode_mask(shape: dict, corners: list, where: str, width: int, height: int) -> np.ndarray:
    """Full-image bool mask from a ``mask`` shape: the crop pasted at its top-left corner."""
    try:
        crop = np.array(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) != 0
    except (KeyError, TypeError, ValueError, OSError):
        raise DataError(f"{where}: field 'mask' must be a base64 PNG; re-save the shape") from None
    if crop.ndim == 3:
        crop = crop.any(axis=2)
    x0, y0 = (round(min(c[i] for c in corners)) for i in (0, 1))
    crop = crop[max(-y0, 0) :, max(-x0, 0) :]  # a crop starting left/above the image
    x0, y0 = max(x0, 0), max(y0, 0)
    mask = np.zeros((height, width), dtype=bool)
    visible = crop[: max(height - y0, 0), : max(width - x0, 0)]
    mask[y0 : y0 + visible.shape[0], x0 : x0 + visible.shape[1]] = visible
    return mask
