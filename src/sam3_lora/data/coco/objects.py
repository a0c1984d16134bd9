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
)
from sam3_lora.data.records import ImageRecord, ObjectRecord
from sam3_lora.data.rle import as_compressed
from sam3_lora.values import is_int, is_number

BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of the image and be clipped without a warning: exporters
round coordinates, so x + w = width + 0.5 is routine and not worth a line in the report."""
MIN_BOX_MASK_IOU = 0.5
"""A given box and its mask's extent must overlap by at least this IoU. Exporters write the
box as the mask's extent (IoU ~1 after rounding); 0.5 is COCO's loosest match, so below it
the box would not even count as a detection of its own mask: one of them is wrong."""
AREA_SLACK = 1.01
"""A stated ``area`` above the image's pixel count times this is impossible (1%: rounding)."""


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
    mask = read_segmentation(entry.get("segmentation"), image, say)
    if mask is False or (mask is not None and not _mask_inside(mask, image, say)):
        return None
    bbox = _read_box(entry, mask, image, say)
    if bbox is None:
        return None
    if mask is not None and mask.area == 0:
        say.warning("empty_mask", "segmentation covers no pixel; kept as a box-only object")
        mask = None
    if mask is not None and not _box_fits_mask(entry, bbox, mask, image, say):
        return None
    area = _read_area(entry, mask, bbox, image, say)
    segmentation = mask.segmentation if mask is not None else None
    return image.id, ObjectRecord(annotation_id, category_id, bbox, segmentation, iscrowd, area)


def read_segmentation(value: Any, image: ImageRecord, say: Reporter) -> Mask | None | bool:
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


def polygon_parts(value: list) -> tuple[list[list[float]], bool] | Invalid:
    """A polygon ``segmentation`` -> (its parts as checked coordinates, whether it was written
    as one flat list instead of nested), or why it cannot be used.

    Every coordinate must be a finite number within +-``MAX_COORDINATE``: pycocotools'
    rasteriser crashes the process (or allocates without bound) on larger or non-finite ones.
    The dataset reader and ``sam3-lora evaluate`` both check polygons with this, so what one
    accepts the other does too.
    """
    flat = bool(value) and all(is_number(item) for item in value)
    parts = []
    for index, part in enumerate([value] if flat else value):
        coordinates = get_coordinates(part, f"segmentation[{index}]")
        if isinstance(coordinates, Invalid):
            return coordinates
        parts.append(coordinates)
    return parts, flat


def rle_counts_cover(counts: Any, height: int, width: int) -> bool:
    """Whether RLE ``counts`` (a COCO string or a list of run lengths) are well formed and
    cover exactly ``height`` x ``width`` pixels (pycocotools trusts them: runs beyond the
    image, negative or beyond 32 bits crash it or give garbage)."""
    runs = _run_lengths(counts)
    return runs is not None and all(run >= 0 for run in runs) and sum(runs) == height * width


def _read_polygons(value: list, say: Reporter) -> Mask | bool:
    checked = polygon_parts(value)
    if isinstance(checked, Invalid):
        say.invalid(checked, "fix the polygon or remove the annotation")
        return False
    parts, flat = checked
    if flat:  # some exporters write one polygon flat instead of as a list of parts
        say.warning("wrong_type", "'segmentation' is one flat list of numbers; read as a "
                    "single polygon (COCO nests it: [[x1, y1, ...]])")
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
    if not rle_counts_cover(counts, *size):
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


def _read_area(entry: dict, mask: Mask | None, bbox: list[float], image: ImageRecord,
               say: Reporter) -> float:
    """The given area if it is possible, else the mask's (or the box's) area."""
    pixels = image.width * image.height
    # A polygon sticking out of the image is clipped when rasterised: so is its area.
    computed = min(mask.area if mask is not None else bbox[2] * bbox[3], float(pixels))
    value = entry.get("area")
    if value is None:
        return computed
    if not is_number(value) or not 0 <= value <= 1e12:  # also false for NaN
        say.warning("bad_number", f"'area' is {describe(value)}; recomputed as {computed:g}")
        return computed
    if value == 0 or value > pixels * AREA_SLACK:
        reason = ("0, but the object covers pixels" if value == 0 else
                  f"more than the {image.width} x {image.height} image's {pixels} pixels")
        say.warning("bad_area", f"'area' is {value:g}, {reason}; recomputed as {computed:g}")
        return computed
    return float(value)


def _mask_inside(mask: Mask, image: ImageRecord, say: Reporter) -> bool:
    """Whether a polygon mask reaches into the image (an RLE always does); an error if not:
    rasterised, it would be empty, whatever its box says."""
    x, y, width, height = mask.bbox
    if mask.area == 0 or (x < image.width and y < image.height and x + width > 0
                          and y + height > 0):
        return True   # (an empty mask is reported as one, below)
    say.error("mask_outside_image", f"its polygon (extent {_rounded(mask.bbox)}) lies wholly "
              f"outside the {image.width} x {image.height} image, so its mask would be empty; "
              "fix the coordinates (pixels of this image) or remove it")
    return False


def _box_fits_mask(entry: dict, box: list[float], mask: Mask, image: ImageRecord,
                   say: Reporter) -> bool:
    """Whether a given box and the mask's extent (both clipped to the image) describe the same
    object; an error if they overlap by less than ``MIN_BOX_MASK_IOU``: training would pull
    the predicted box and mask towards different places."""
    if entry.get("bbox") in (None, []):  # the box is the mask's extent
        return True
    extent = _clipped(mask.bbox, image)
    overlap = _box_iou(box, extent)
    if overlap >= MIN_BOX_MASK_IOU:
        return True
    normalised = " (normalised 0..1 coordinates? COCO uses pixels)" if max(
        mask.bbox[0] + mask.bbox[2], mask.bbox[1] + mask.bbox[3]) <= 1.0 else ""
    say.error("box_mask_mismatch", f"box {_rounded(box)} and its segmentation's extent "
              f"{_rounded(extent)} overlap by IoU {overlap:.2f}{normalised}; they must outline the "
              "same object: fix one of them or remove the annotation")
    return False


def _clipped(box: list[float], image: ImageRecord) -> list[float]:
    left, top = max(box[0], 0.0), max(box[1], 0.0)
    right = min(box[0] + box[2], float(image.width))
    bottom = min(box[1] + box[3], float(image.height))
    return [left, top, max(right - left, 0.0), max(bottom - top, 0.0)]


def _box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x, y, w, h] boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _rounded(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in box) + "]"
