"""Checking COCO results (predictions) against validated ground truth; see ``evaluation.inputs``.

Every prediction needs a known ``image_id`` and ``category_id``, a ``score`` in [0, 1] and a
region: an RLE ``segmentation`` (compressed, ``counts`` str or bytes, or uncompressed) of its
image's size, or for bbox evaluation a ``bbox`` [x, y, w, h] (else its mask's extent). All
compressed RLE strings are validated at once (``data.rle_check``) before pycocotools sees them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from sam3_lora.data.rle import as_compressed, as_json
from sam3_lora.data.rle_check import invalid_rle_strings
from sam3_lora.errors import DataError
from sam3_lora.values import is_finite, is_number

RESULTS_FORMAT = "a JSON list of {image_id, category_id, score, segmentation (RLE) or bbox}"


def check_predictions(predictions: Any, dataset: dict, name: str, iou_type: str) -> list[dict]:
    """Normalised copies of ``predictions`` (see ``EvalInputs.predictions``); ``dataset``:
    the checked GT. ``DataError`` for the first bad entry, a warning for an empty list."""
    if isinstance(predictions, dict) and "annotations" in predictions:
        raise DataError(f"{name}: is a COCO dataset (it has 'annotations'), not COCO results; "
                        f"give the predictions: {RESULTS_FORMAT}")
    if not isinstance(predictions, list):
        raise DataError(f"{name}: is a JSON {type(predictions).__name__}, not COCO results; "
                        f"give {RESULTS_FORMAT}")
    if not predictions:
        warnings.warn(f"{name}: no predictions; mAP and pmF1 are 0, cgF1 is 0 (or undefined "
                      "without negative units)", stacklevel=3)
        return []
    images = {image["id"]: image for image in dataset["images"]}
    category_ids = {c["id"] for c in dataset["categories"]}
    results, pending = [], []  # pending: (result index, prediction index, RLE bytes, area)
    for n, pred in enumerate(predictions):
        result = _prediction_head(pred, n, images, category_ids, predictions, name)
        if iou_type == "bbox" and pred.get("bbox") is not None:
            result["bbox"] = _prediction_box(pred["bbox"], n, result, name)
        else:
            rle = _prediction_rle(pred.get("segmentation"), n, result, images, name, iou_type)
            pending.append((len(results), n, rle["counts"], rle["size"][0] * rle["size"][1]))
            result["segmentation"] = rle
        results.append(result)
    _check_prediction_rles(pending, results, name)
    if iou_type == "bbox":
        _boxes_from_masks(results)
    return results


def _where(n: int, pred: dict) -> str:
    return f"prediction {n} (image_id {pred.get('image_id')!r})"


def _prediction_head(pred: Any, n: int, images: dict, category_ids: set, predictions: list,
                     name: str) -> dict:
    """image_id, category_id and score of one prediction, checked."""
    if not isinstance(pred, dict):
        raise DataError(f"{name}: prediction {n} is a {type(pred).__name__}, not an object; "
                        f"give {RESULTS_FORMAT}")
    image_id, category_id, score = pred.get("image_id"), pred.get("category_id"), pred.get("score")
    if not _known(image_id, images):
        raise _unknown("image_id", image_id, n, predictions, images, name,
                       "predictions must use the ids of the GT file's images (same split)")
    if not _known(category_id, category_ids):
        raise _unknown("category_id", category_id, n, predictions, category_ids, name,
                       "predictions must use the GT file's category ids")
    if not is_number(score) or not 0.0 <= score <= 1.0:
        raise DataError(f"{name}: {_where(n, pred)} has score {score!r}; scores must be "
                        "probabilities in [0, 1] (apply a sigmoid to logits)")
    return {"image_id": image_id, "category_id": category_id, "score": float(score)}


def _known(value: Any, ids: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and value in ids


def _unknown(key: str, value: Any, n: int, predictions: list, ids: Any, name: str,
             fix: str) -> DataError:
    others = sum(1 for p in predictions if isinstance(p, dict) and not _known(p.get(key), ids)) - 1
    more = f" (and {others} more predictions with unknown {key}s)" if others > 0 else ""
    as_number = isinstance(value, str) and value.isdigit() and int(value) in ids
    hint = " (GT ids are numbers, not strings)" if as_number else ""
    return DataError(f"{name}: prediction {n} has {key} {value!r}, which is not in the ground "
                     f"truth{more}{hint}; {fix}")


def _prediction_box(box: Any, n: int, result: dict, name: str) -> list[float]:
    if not is_box(box):
        raise DataError(f"{name}: {_where(n, result)} has bbox {box!r}; write [x, y, width, "
                        "height] with non-negative width and height")
    return [float(v) for v in box]


def _prediction_rle(segmentation: Any, n: int, result: dict, images: dict, name: str,
                    iou_type: str) -> dict:
    """The prediction's mask as {"size": [h, w], "counts": bytes}, its size checked."""
    if segmentation is None:
        if iou_type == "segm":
            raise DataError(f"{name}: {_where(n, result)} has no segmentation; add its RLE mask, "
                            "or evaluate boxes: bbox", option="iou_type")
        raise DataError(f"{name}: {_where(n, result)} has no bbox; add a bbox [x, y, width, "
                        "height]")
    if not isinstance(segmentation, dict):
        raise DataError(f"{name}: {_where(n, result)} has a {type(segmentation).__name__} "
                        "segmentation; predictions need an RLE {size: [h, w], counts} "
                        "(pycocotools.mask.encode)")
    image = images[result["image_id"]]
    size = segmentation.get("size")
    size = list(size) if isinstance(size, (list, tuple)) else size
    expected = [image["height"], image["width"]] if "height" in image else None
    if size != expected and (expected is not None or not _is_size(size)):
        raise DataError(f"{name}: {_where(n, result)} has an RLE of size {size!r}, but the image "
                        f"is {expected or '[height, width]'}; encode masks at the image's size")
    counts = segmentation.get("counts")
    if isinstance(counts, str) and counts.isascii():
        return as_compressed({"size": size, "counts": counts})
    if isinstance(counts, bytes):
        return {"size": size, "counts": counts}
    if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                        and c >= 0 for c in counts) \
            and sum(counts) == size[0] * size[1]:
        return coco_mask.frPyObjects({"size": size, "counts": counts}, *size)
    raise DataError(f"{name}: {_where(n, result)} has a malformed RLE (counts "
                    f"{str(counts)[:40]!r}); write masks with pycocotools.mask.encode, counts "
                    "decoded to str")


def _check_prediction_rles(pending: list, results: list[dict], name: str) -> None:
    """Validate every compressed RLE at once; make the JSON-ready (str counts) copies."""
    if not pending:
        return
    bad = invalid_rle_strings([p[2] for p in pending], np.array([p[3] for p in pending]))
    if bad.size:
        index, n = pending[int(bad[0])][:2]
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise DataError(f"{name}: {_where(n, results[index])} has a malformed RLE: its runs do "
                        f"not cover the image{more}; write masks with pycocotools.mask.encode, "
                        "counts decoded to str")
    for index, *_ in pending:
        rle = results[index]["segmentation"]
        rle["counts"] = as_json(rle)["counts"]


def _boxes_from_masks(results: list[dict]) -> None:
    """bbox evaluation of mask-only predictions: each mask's extent becomes its box."""
    masked = [r for r in results if "segmentation" in r]
    if masked:
        boxes = coco_mask.toBbox([r.pop("segmentation") for r in masked]).tolist()
        for result, box in zip(masked, boxes, strict=True):
            result["bbox"] = box


def _is_size(size: Any) -> bool:
    return isinstance(size, list) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)


def is_box(box: Any) -> bool:
    """[x, y, w, h]: four finite numbers, w and h >= 0."""
    return (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(is_finite, box))
            and box[2] >= 0 and box[3] >= 0)
