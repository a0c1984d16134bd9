"""Model answers as COCO results: what ``sam3-lora validate``, ``predict`` (PyTorch or ONNX)
and the app write, and what ``sam3-lora evaluate`` reads.

A *result* is one detection in COCO results format: ``image_id``, ``category_id``, ``score``,
``bbox`` [x, y, w, h] in pixels and ``segmentation`` (RLE, JSON form). Here, below
``evaluation`` and ``serve``, so both write them with the same functions.
"""

from __future__ import annotations

import numpy as np

from sam3_lora.data.rle import encode


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
