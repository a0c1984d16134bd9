"""Reading and checking the inputs of an evaluation: COCO ground truth and COCO results.

``prepare(gt, predictions, iou_type)`` validates both and returns an ``EvalInputs`` that
pycocotools and the cgF1 code can use as is. Every user error is a ``DataError`` of one line
naming the file, the entry (annotation id, prediction index, image or category id) and the
fix; an empty prediction list is a warning, not an error (every metric is then 0, or None
where undefined). Files are parsed, and the ground truth's top level checked, by the dataset
reader's own ``data.coco.split.read_json`` / ``check_top_level``: training and evaluation
accept the same COCO files.

Normalisation, so that pycocotools never meets input it mishandles:

- GT annotation ids become 1..N (COCOeval takes id 0 for "unmatched", so a GT with id 0
  could never be matched; duplicate ids would overwrite each other in its index).
- ``segm``: every mask becomes a compressed RLE with ``str`` counts. A GT object without a
  mask gets its box as the mask (as ``sam3-lora validate`` does), with a warning. Prediction
  boxes are ignored, so a detection's area (for mAP_small/medium/large) is its mask's area.
- ``bbox``: a prediction without ``bbox`` gets its mask's extent; GT likewise.
- RLE strings are checked in one vectorised pass (``data.rle_check``): pycocotools hangs or
  returns garbage on a malformed one. Predictions are checked in ``evaluation.predictions``.
- GT polygons and boxes are checked as the dataset reader checks them
  (``data.coco.objects.polygon_parts``, ``data.coco.fields.get_box``: finite, within
  +-1e6 px), and uncompressed RLE counts must cover the image: pycocotools' rasteriser
  crashes the process on anything else (a polygon at 1e9 px, NaN, a negative run).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from sam3_lora.data.coco.fields import Invalid, describe, get_box
from sam3_lora.data.coco.objects import polygon_parts, rle_counts_cover
from sam3_lora.data.coco.split import check_top_level, read_json
from sam3_lora.data.rle import as_json, to_rle
from sam3_lora.data.rle_check import invalid_rle_strings
from sam3_lora.errors import DataError, Sam3LoraWarning
from sam3_lora.evaluation.predictions import check_predictions, is_box
from sam3_lora.values import is_finite

IOU_TYPES = ("segm", "bbox")
LVIS_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
IMAGE_KEYS = ("id", "height", "width", *LVIS_KEYS, "is_instance_exhaustive")
"""What is kept of a GT image: its size and which of its units are exhaustively annotated."""


@dataclass
class EvalInputs:
    """Validated, normalised ground truth and predictions of one evaluation."""

    iou_type: str
    gt: dict
    """COCO dataset for pycocotools: images, categories, annotations with ids 1..N, ``area``,
    ``iscrowd``, ``bbox`` [x, y, w, h] and (segm) ``segmentation`` as compressed RLE."""
    predictions: list[dict]
    """COCO results: image_id, category_id, score (float in [0, 1]) and ``segmentation``
    (segm, compressed RLE with str counts) or ``bbox`` (bbox), in the file's order."""
    category_names: dict[Any, str] = field(default_factory=dict)
    """Category id -> unique display name, in the GT file's order."""


def load_json(path: str | Path, what: str, empty: Any = ...) -> Any:
    """Parse a JSON file with the dataset reader's ``read_json``; ``DataError`` for a missing,
    unreadable or truncated one. A blank file gives ``empty`` when one is given (an empty
    predictions file: no predictions)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the path of the {what}")
    return read_json(path, f"the {what}", empty)


def prepare(gt: Any, predictions: Any, iou_type: str = "segm", gt_name: str = "ground truth",
            predictions_name: str = "predictions") -> EvalInputs:
    """Check and normalise both inputs; ``*_name`` (usually file paths) start the messages."""
    if iou_type not in IOU_TYPES:
        raise DataError(f"{iou_type!r} is not an IoU type; use 'segm' (masks) or 'bbox' (boxes)",
                        option="iou_type")
    dataset, names = _ground_truth(gt, gt_name, iou_type)
    results = check_predictions(predictions, dataset, predictions_name, iou_type)
    return EvalInputs(iou_type, dataset, results, names)


# ---------------------------------------------------------------- ground truth

def _ground_truth(gt: Any, name: str, iou_type: str) -> tuple[dict, dict]:
    check_top_level(gt, name)   # the dataset reader's check: one idea of a COCO GT file
    annotations = gt.get("annotations") or []
    images = _images(gt["images"], name, iou_type)
    if not images:
        raise DataError(f"{name}: has no images, so there is nothing to evaluate; give a split "
                        "with images")
    categories, names = _categories(gt["categories"], name)
    category_ids = {c["id"] for c in categories}
    _check_unique_annotation_ids(annotations, name)
    anns = [_annotation(ann, n, images, category_ids, name, iou_type)
            for n, ann in enumerate(annotations)]
    _check_gt_rles(anns, annotations, name)
    boxes_as_masks = sum(ann.pop("_box_as_mask", False) for ann in anns)
    if boxes_as_masks:
        warnings.warn(Sam3LoraWarning(
            f"{name}: {boxes_as_masks} object(s) have no mask; their box is used as the mask for "
            "segm evaluation; add masks, or evaluate boxes: bbox", option="iou_type"), stacklevel=3)
    for new_id, ann in enumerate(anns, start=1):
        ann["id"] = new_id
    dataset = {"images": list(images.values()), "categories": categories, "annotations": anns}
    return dataset, names


def _check_unique_annotation_ids(annotations: list, name: str) -> None:
    """GT ids are renumbered for pycocotools, but two objects sharing one id is a broken
    export (a merge of two files, an object pasted twice): refused, not silently kept."""
    first_index: dict[Any, int] = {}
    for n, ann in enumerate(annotations):
        annotation_id = ann.get("id") if isinstance(ann, dict) else None
        if annotation_id is None or not isinstance(annotation_id, (int, str)):
            continue
        if annotation_id in first_index:
            raise DataError(f"{name}: annotation id {annotation_id!r} appears twice (annotations"
                            f"[{first_index[annotation_id]}] and [{n}]); give every annotation a "
                            "unique id")
        first_index[annotation_id] = n


def _id(entry: Any, key: str, where: str, name: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{name}: {where} is not a JSON object; fix or remove it")
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{name}: {where} has no valid '{key}' (got {value!r}); give it an "
                        "integer id")
    return value


def _images(entries: list, name: str, iou_type: str) -> dict:
    images = {}
    for n, entry in enumerate(entries):
        image_id = _id(entry, "id", f"images[{n}]", name)
        if image_id in images:
            raise DataError(f"{name}: image id {image_id} appears twice; give every image a "
                            "unique id")
        height, width = entry.get("height"), entry.get("width")
        sized = all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                    for v in (height, width))
        if iou_type == "segm" and not sized:
            raise DataError(f"{name}: image id {image_id} has no valid height/width (got "
                            f"{height!r}, {width!r}); add the image size in pixels")
        for key in LVIS_KEYS:
            if not isinstance(entry.get(key, []), list):
                raise DataError(f"{name}: image id {image_id} has {key} {entry[key]!r}; write a "
                                "list of category ids")
        images[image_id] = {key: entry[key] for key in IMAGE_KEYS if key in entry}
    return images


def _categories(entries: list, name: str) -> tuple[list[dict], dict]:
    categories, names, seen = [], {}, set()
    for n, entry in enumerate(entries):
        category_id = _id(entry, "id", f"categories[{n}]", name)
        if category_id in names:
            raise DataError(f"{name}: category id {category_id} appears twice; give every "
                            "category a unique id")
        label = str(entry.get("name", category_id))
        if label in seen:  # per-category results are keyed by name: keep them apart
            label = f"{label} (id {category_id})"
        seen.add(label)
        names[category_id] = label
        categories.append({"id": category_id, "name": label})
    return categories, names


def _annotation(ann: Any, n: int, images: dict, category_ids: set, name: str,
                iou_type: str) -> dict:
    where = f"annotations[{n}]"
    if isinstance(ann, dict) and "id" in ann:
        where = f"annotation id {ann['id']}"
    image_id = _id(ann, "image_id", where, name)
    if image_id not in images:
        raise DataError(f"{name}: {where} has image_id {image_id!r}, which is not in 'images'; "
                        "fix the id or remove the annotation")
    category_id = _id(ann, "category_id", where, name)
    if category_id not in category_ids:
        raise DataError(f"{name}: {where} has category_id {category_id!r}, which is not in "
                        "'categories'; fix the id or add the category")
    image = images[image_id]
    out = {"image_id": image_id, "category_id": category_id,
           "iscrowd": int(bool(ann.get("iscrowd", 0)))}
    box = ann.get("bbox")
    checked = get_box(list(box)) if isinstance(box, (list, tuple)) else None
    if box is not None and (not is_box(box) or isinstance(checked, Invalid)):
        reason = f" ({checked.reason})" if isinstance(checked, Invalid) else ""
        raise DataError(f"{name}: {where} has bbox {describe(box)}{reason}; write [x, y, width, "
                        "height] in pixels, with non-negative width and height")
    rle = None
    if iou_type == "segm" or box is None:
        rle = _gt_mask(ann, where, image, name)
        if rle is not None and isinstance(ann["segmentation"], dict):
            out["_check"] = (rle["counts"], image["height"] * image["width"])
    if rle is None and box is None:
        raise DataError(f"{name}: {where} has neither a usable segmentation nor a bbox; add one "
                        "or remove the annotation")
    if iou_type == "segm":
        if rle is None:  # box-only object: its box is its mask
            x, y, w, h = box
            rle = coco_mask.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]],
                                        image["height"], image["width"])[0]
            out["_box_as_mask"] = True
        out["segmentation"] = as_json(rle)
    out["bbox"] = [float(v) for v in box] if box is not None else coco_mask.toBbox(rle).tolist()
    area = ann.get("area")
    if area is None:
        area = float(coco_mask.area(rle)) if iou_type == "segm" else out["bbox"][2] * out["bbox"][3]
    elif not is_finite(area) or area < 0:  # NaN or 1e400 would silently mis-bin mAP_small..large
        raise DataError(f"{name}: {where} has area {describe(area)}; write the object's area in "
                        "pixels (or leave it out: it is then computed)")
    out["area"] = float(area)
    return out


def _gt_mask(ann: dict, where: str, image: dict, name: str) -> dict | None:
    if "height" not in image:
        return None
    segmentation = _checked_segmentation(ann.get("segmentation"), image, where, name)
    try:
        rle = to_rle(segmentation, image["height"], image["width"])
    except (ValueError, TypeError) as error:
        raise DataError(f"{name}: {where} has an unusable segmentation ({error}); write polygons "
                        "or an RLE of the image's size") from None
    return rle


def _checked_segmentation(segmentation: Any, image: dict, where: str, name: str) -> Any:
    """``segmentation`` with polygons checked (and flat ones nested) and uncompressed RLE
    counts checked, so that pycocotools never rasterises what crashes it."""
    if isinstance(segmentation, list) and segmentation:
        parts = polygon_parts(segmentation)
        if isinstance(parts, Invalid):
            raise DataError(f"{name}: {where} has an unusable polygon ({parts.reason}); write "
                            "polygons in pixels of the image, or fix the annotation")
        return parts[0]
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list) \
            and segmentation.get("size") == [image["height"], image["width"]] \
            and not rle_counts_cover(segmentation["counts"], image["height"], image["width"]):
        raise DataError(f"{name}: {where} has a malformed RLE segmentation (its counts are not "
                        "non-negative integers covering the image); re-encode the mask with "
                        "pycocotools.mask.encode")
    return segmentation



def _check_gt_rles(anns: list[dict], annotations: list, name: str) -> None:
    """One vectorised pass over the GT masks given as compressed RLE (they may be malformed;
    masks made from polygons are valid by construction)."""
    checks = [(n, ann.pop("_check")) for n, ann in enumerate(anns) if "_check" in ann]
    bad = invalid_rle_strings([c for _, (c, _) in checks],
                              np.array([area for _, (_, area) in checks], dtype=np.int64))
    if bad.size:
        n = checks[int(bad[0])][0]
        entry = annotations[n]
        raise DataError(f"{name}: annotation id {entry.get('id')} (annotations[{n}]) has a "
                        "malformed RLE segmentation (its runs do not cover the image); "
                        "re-encode the mask with pycocotools.mask.encode")
