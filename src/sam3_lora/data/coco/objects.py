"""COCO annotations into ``ObjectRecord``s: shape checks, boxes derived from masks, clipping.

The rules (error = the object is left out, warning = it is kept, repaired) are listed in
``data.coco.split``'s docstring. Polygons are never rasterised here: their box is their extent and
their area the shoelace area, so a corrupt polygon can never make pycocotools allocate
without bound. RLE counts are decoded and checked in Python before pycocotools sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycocotools import mask as mask_utils

from sam3_lora.data.coco.fields import (
    Findings,
    Invalid,
    Reporter,
    describe,
    get_box,
    get_coordinates,
    get_id,
    is_int,
    is_number,
)
from sam3_lora.data.records import ImageRecord, ObjectRecord
from sam3_lora.data.rle import as_compressed

BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of the image and be clipped without a warning: exporters
round coordinates, so x + w = width + 0.5 is routine and not worth a line in the report."""


@dataclass
class Catalog:
    """What annotations are checked against."""

    images: dict[int, ImageRecord]
    """Usable images by id."""
    image_ids_in_file: set[int]
    """Every image id the file lists, usable or not: annotations of images left out for
    their own error are left out with them, without one more problem each."""
    category_ids: set[int]
    category_ids_in_file: set[int]


@dataclass
class Mask:
    """A checked segmentation and what it implies."""

    segmentation: Any
    """Cleaned polygons (list of flat float lists) or the RLE dict as given."""
    bbox: list[float]
    """Extent [x, y, w, h] in pixels; w = h = 0 for an empty mask."""
    area: float
    """Pixels covered."""


def parse_object(entry: Any, index: int, catalog: Catalog, findings: Findings
                 ) -> tuple[int, ObjectRecord] | None:
    """One ``annotations`` entry -> (image id, object), or None (with a problem) if unusable."""
    say = findings.about(f"annotations[{index}]")
    if not isinstance(entry, dict):
        say.error("wrong_type", f"is {describe(entry)}, not an object; remove it")
        return None
    annotation_id = get_id(entry, "id")
    if isinstance(annotation_id, Invalid):
        say.invalid(annotation_id, "give every annotation a unique integer id")
        return None
    say = findings.about(f"annotation id {annotation_id}", annotation_id=annotation_id)
    image = _image_of(entry, catalog, say)
    category_id = _category_of(entry, catalog, say)
    if image is None or category_id is None:
        return None
    say.image_id = image.id
    iscrowd = _read_iscrowd(entry, say)
    if iscrowd is None:
        return None
    mask = _read_segmentation(entry.get("segmentation"), image, say)
    if mask is False:
        return None
    bbox = _read_box(entry, mask, image, say)
    if bbox is None:
        return None
    if mask is not None and mask.area == 0:
        say.warning("empty_mask", "segmentation covers no pixel; kept as a box-only object")
        mask = None
    area = _read_area(entry, mask, bbox, say)
    segmentation = mask.segmentation if mask is not None else None
    return image.id, ObjectRecord(annotation_id, category_id, bbox, segmentation, iscrowd, area)


def _read_segmentation(value: Any, image: ImageRecord, say: Reporter) -> Mask | None | bool:
    """A ``segmentation`` value -> Mask, None (box-only object), or False (unusable)."""
    # [[]] too: some exporters write box-only objects as one empty polygon.
    if value is None or value == {} or (isinstance(value, list) and all(
            part == [] for part in value)):
        return None
    if isinstance(value, dict):
        return _read_rle(value, image, say)
    if isinstance(value, list):
        return _read_polygons(value, say)
    say.error("wrong_type", f"'segmentation' is {describe(value)}, neither polygons nor RLE; "
              "fix or remove it (a box-only object has no segmentation)")
    return False


def _image_of(entry: dict, catalog: Catalog, say: Reporter) -> ImageRecord | None:
    image_id = get_id(entry, "image_id")
    if isinstance(image_id, Invalid):
        say.invalid(image_id, "set it to the id of the image the object is in")
        return None
    if image_id in catalog.images:
        return catalog.images[image_id]
    if image_id not in catalog.image_ids_in_file:
        say.error("unknown_image", f"image_id {image_id} is not in 'images'; add the image "
                  "or remove the annotation")
    return None


def _category_of(entry: dict, catalog: Catalog, say: Reporter) -> int | None:
    category_id = get_id(entry, "category_id")
    if isinstance(category_id, Invalid):
        say.invalid(category_id, "set it to the id of one of the 'categories'")
        return None
    if category_id in catalog.category_ids:
        return category_id
    if category_id not in catalog.category_ids_in_file:
        say.error("unknown_category", f"category_id {category_id} is not in 'categories'; "
                  "add the category or fix the id")
    return None


def _read_iscrowd(entry: dict, say: Reporter) -> bool | None:
    value = entry.get("iscrowd", 0)
    if value in (0, 1) and (is_int(value) or isinstance(value, bool)):
        return bool(value)
    say.error("bad_value", f"'iscrowd' is {describe(value)}; use 0 or 1")
    return None


def _read_polygons(value: list, say: Reporter) -> Mask | bool:
    if all(is_number(item) for item in value):
        # Some exporters write one polygon flat instead of as a list of parts.
        say.warning("wrong_type", "'segmentation' is one flat list of numbers; read as a "
                    "single polygon (COCO nests it: [[x1, y1, ...]])")
        value = [value]
    parts = []
    for part_index, part in enumerate(value):
        coordinates = get_coordinates(part, f"segmentation[{part_index}]")
        if isinstance(coordinates, Invalid):
            say.invalid(coordinates, "fix the polygon or remove the annotation")
            return False
        parts.append(coordinates)
    usable = [part for part in parts if _is_polygon(part)]
    report = say.error if not usable else say.warning
    for index, part in enumerate(parts):
        if _is_polygon(part):
            continue
        code = "polygon_too_short" if len(part) < 6 else "bad_polygon"
        consequence = "object left out" if not usable else "part dropped"
        report(code, f"polygon part {index} has {len(part)} numbers; a polygon needs an even "
               f"count of at least 6 (3 points x, y) - {consequence}; redraw or remove it")
    if not usable:
        return False
    return Mask(usable, _polygons_extent(usable), sum(_shoelace_area(p) for p in usable))


def _is_polygon(coordinates: list[float]) -> bool:
    """At least 3 (x, y) points."""
    return len(coordinates) >= 6 and len(coordinates) % 2 == 0


def _polygons_extent(parts: list[list[float]]) -> list[float]:
    xs = [x for part in parts for x in part[0::2]]
    ys = [y for part in parts for y in part[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _shoelace_area(part: list[float]) -> float:
    xs, ys = part[0::2], part[1::2]
    twice_area = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
    return abs(twice_area) / 2.0


def _read_rle(value: dict, image: ImageRecord, say: Reporter) -> Mask | bool:
    size, counts = value.get("size"), value.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(s) and s > 0 for s in size)):
        say.error("bad_rle", f"RLE 'size' is {describe(size)}, not [height, width]; re-export "
                  "the mask")
        return False
    if size != [image.height, image.width]:
        hint = " (swapped: COCO's order is [height, width])" if size == [
            image.width, image.height] else ""
        say.error("rle_size_mismatch", f"RLE size {size} differs from the image's "
                  f"[height, width] [{image.height}, {image.width}]{hint}; re-export the mask "
                  "at the image's size")
        return False
    runs = _run_lengths(counts)
    if runs is None or any(run < 0 for run in runs) or sum(runs) != size[0] * size[1]:
        say.error("bad_rle", f"RLE 'counts' ({describe(counts)}) does not decode to "
                  f"{size[0]} x {size[1]} pixels; re-export the mask")
        return False
    rle = _compressed(value, size)
    return Mask(value, [float(v) for v in mask_utils.toBbox(rle)], float(mask_utils.area(rle)))


def _run_lengths(counts: Any) -> list[int] | None:
    """RLE counts (COCO string or list) -> run lengths, or None if they are malformed."""
    if isinstance(counts, list):
        return counts if all(is_int(run) for run in counts) else None
    if isinstance(counts, str):
        return _decode_counts_string(counts)
    return None


def _decode_counts_string(text: str) -> list[int] | None:
    """Python twin of pycocotools' ``rleFrString``: 6-bit chars from '0', LEB128-like, with
    each count from the third on stored as a difference to the one two before it."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text) or shift > 35:  # cut off, or beyond any image size
                return None
            chunk = ord(text[position]) - 48
            if not 0 <= chunk <= 63:
                return None
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _compressed(value: dict, size: list[int]) -> dict:
    """A checked RLE dict in the compressed form pycocotools' toBbox/area take."""
    if isinstance(value["counts"], str):
        return as_compressed({"size": size, "counts": value["counts"]})
    return mask_utils.frPyObjects({"size": size, "counts": value["counts"]}, *size)


def _read_box(entry: dict, mask: Mask | None, image: ImageRecord, say: Reporter
              ) -> list[float] | None:
    """The object's box, given or derived from its mask, clipped to the image; None if unusable."""
    raw = entry.get("bbox")
    if raw is None or raw == []:
        if mask is None:
            say.error("missing_key", "has neither 'bbox' nor 'segmentation'; add one")
            return None
        if mask.area == 0:
            say.error("empty_mask", "has no 'bbox' and its segmentation covers no pixel; "
                      "redraw or remove it")
            return None
        box = mask.bbox
    else:
        box = get_box(raw)
        if isinstance(box, Invalid):
            say.invalid(box, "write the box as [x, y, width, height] in pixels")
            return None
    return _clip_box(box, image, say)


def _clip_box(box: list[float], image: ImageRecord, say: Reporter) -> list[float] | None:
    """[x, y, w, h] clipped to the image; None (with an error) if nothing of it is inside."""
    x, y, width, height = box
    if width <= 0 or height <= 0:
        say.error("zero_area_box", f"box {box} has no area (width and height must be > 0); "
                  "redraw or remove it")
        return None
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + width, float(image.width)), min(y + height, float(image.height))
    if right <= left or bottom <= top:
        say.error("box_outside_image", f"box {box} lies outside the {image.width} x "
                  f"{image.height} image; fix the coordinates or remove it")
        return None
    overshoot = max(-x, -y, x + width - image.width, y + height - image.height)
    if overshoot > BOX_TOLERANCE:
        say.warning("box_outside_image", f"box {box} sticks {overshoot:.1f} px out of the "
                    f"{image.width} x {image.height} image; clipped")
    return [left, top, right - left, bottom - top]


def _read_area(entry: dict, mask: Mask | None, bbox: list[float], say: Reporter) -> float:
    """The given area if it is a sane number, else the mask's (or the box's) area."""
    computed = mask.area if mask is not None else bbox[2] * bbox[3]
    value = entry.get("area")
    if value is None:
        return computed
    if not is_number(value) or not 0 <= value <= 1e12:  # also false for NaN
        say.warning("bad_number", f"'area' is {describe(value)}; recomputed as {computed:g}")
        return computed
    return float(value)
