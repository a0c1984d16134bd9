"""Model answers and ground truth as COCO dicts: what the metrics read and the files hold.

A *result* is one detection in COCO results format: ``image_id``, ``category_id``, ``score``,
``bbox`` [x, y, w, h] in pixels and ``segmentation`` (RLE, JSON form). ``sam3-lora
validate``, ``predict`` (PyTorch or ONNX) and the app all write theirs with these functions.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora.data.records import CocoSplit, ObjectRecord
from sam3_lora.data.rle import as_compressed, as_json, encode, to_rle


def coco_results(scores: np.ndarray, boxes: np.ndarray, masks: np.ndarray, image_id: int, category_id: int,
                 **extra) -> list[dict]:
    """One query's detections, (n,) scores, (n, 4) xyxy pixel boxes and (n, H, W) masks, as
    COCO results entries; ``extra`` fields are added to each entry."""
    return [{
        "image_id": image_id, "category_id": category_id, **extra, "score": round(float(score), 5),
        "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
        "segmentation": encode(masks[i]),
    } for i, (score, (x1, y1, x2, y2)) in enumerate(zip(scores, boxes, strict=True))]


def prediction_entries(predictions: list[dict], image_id: int) -> list[dict]:
    """One image's predictions (one dict per prompt, as ``SAM3LoRAInference.predict`` gives)
    as COCO results: category_id = the prompt's index + 1, plus "prompt" and "box_xyxy"."""
    entries = []
    for index, found in enumerate(predictions):
        mine = coco_results(found["scores"], found["boxes"], found["masks"], image_id, index + 1,
                            prompt=found["prompt"])
        for entry, box in zip(mine, found["boxes"], strict=True):
            entry["box_xyxy"] = [round(float(v), 2) for v in box]
        entries += mine
    return entries


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
