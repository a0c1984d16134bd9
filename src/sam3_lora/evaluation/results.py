"""Ground truth as COCO dicts, and comparing masks: what the metrics read.

Model answers become COCO results (``coco_results``, ``prediction_entries``) in
``data.results``, below this layer, so that ``predict`` and the app write them without the
evaluation code.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.data.records import CocoSplit, ObjectRecord
from sam3_lora.data.rle import as_compressed, as_json, to_rle


def ground_truth(split: CocoSplit, image_ids: set[int] | None = None) -> dict:
    """The split as a COCO ground-truth dict. Box-only objects get their box as the mask,
    unless no object of the split has a mask: then there is no ``segmentation`` at all, and
    ``gt_iou_type`` says boxes are what can be scored."""
    with_masks = split_has_masks(split)
    images, annotations = [], []
    for record in split.images:
        if image_ids is not None and record.id not in image_ids:
            continue
        images.append({"id": record.id, "file_name": record.file_name, "width": record.width,
                       "height": record.height, "neg_category_ids": record.neg_category_ids,
                       "not_exhaustive_category_ids": record.not_exhaustive_category_ids})
        for obj in record.objects:
            annotation = {"id": obj.id, "image_id": record.id, "category_id": obj.category_id,
                          "bbox": list(obj.bbox), "iscrowd": int(obj.iscrowd)}
            if with_masks:
                rle = object_rle(obj, record.height, record.width)
                annotation.update(area=float(mask_utils.area(rle)), segmentation=as_json(rle))
            else:
                annotation["area"] = float(obj.bbox[2] * obj.bbox[3])
            annotations.append(annotation)
    categories = [{"id": c, "name": name} for c, name in split.categories.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def split_has_masks(split: CocoSplit) -> bool:
    """Whether any object of the split has a mask (polygon or RLE), not just a box."""
    return any(obj.segmentation for record in split.images for obj in record.objects)


def object_rle(obj: ObjectRecord, height: int, width: int) -> dict:
    """An object's mask as a compressed RLE; a box-only object's box, filled."""
    rle = to_rle(obj.segmentation, height, width) if obj.segmentation else None
    if rle is None:
        x, y, w, h = obj.bbox
        rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)[0]
    return as_compressed(rle)


def gt_iou_type(gt: dict) -> str:
    """What a COCO ground truth can be scored on: ``segm`` (masks) when any object has a mask,
    else ``bbox``: scoring masks against boxes used as masks would measure how box-like the
    predicted masks are, not how right they are."""
    annotations = gt.get("annotations") or []
    if annotations and not any(a.get("segmentation") for a in annotations):
        return "bbox"
    return "segm"


def mask_ious(masks_a: list[dict], masks_b: list[dict]) -> np.ndarray:
    """(len(a), len(b)) IoUs between two lists of RLEs (either form); no crowd regions."""
    if not masks_a or not masks_b:
        return np.zeros((len(masks_a), len(masks_b)))
    return np.asarray(mask_utils.iou([as_compressed(r) for r in masks_a], [as_compressed(r) for r in masks_b],
                                     [0] * len(masks_b)))
