"""SAM3's cgF1 family (``sam3/eval/cgf1_eval.py``), per (image, category) unit.

A *unit* is one (image, category) pair, i.e. one text prompt on one image. Only predictions
with ``score >= score_threshold`` (SAM3: 0.5) count. In each unit, predictions and GT objects
are matched one-to-one maximising the summed IoU (``scipy.optimize.linear_sum_assignment``);
at each IoU threshold t in 0.50:0.05:0.95 a match with IoU >= t is a TP, and
FP = #pred - TP, FN = #GT - TP. Then, with SAM3's epsilons:

- image level: IL_TP (GT and predictions), IL_FN (GT, none predicted), IL_FP (no GT, some
  predicted), IL_TN (neither); IL_MCC = (TP TN - FP FN) / (sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
  + 1e-6) over these unit counts.
- positive micro: over all units, pmP = TP / (TP + pmFP + 1e-4) where pmFP counts FPs only
  in IL_TP units, R = TP / (TP + FN + 1e-4), pmF1 = 2 pmP R / (pmP + R + 1e-4).
- cgF1 = pmF1 x IL_MCC at each threshold; ``cgF1`` is its mean over the 10 thresholds,
  ``cgF1_50`` / ``cgF1_75`` its values at 0.5 / 0.75 (``pmF1*`` likewise).

Which units exist (SAM3 evaluates only exhaustively annotated ones):

- every (image, category) pair of the GT file, so a category absent from an exhaustively
  annotated image is a negative unit;
- an image with ``is_instance_exhaustive: false`` (SA-Co) contributes no unit;
- a category in an image's ``not_exhaustive_category_ids`` (LVIS) is skipped there;
- an image that lists ``neg_category_ids`` (LVIS, non-empty) has as negative units only those
  categories; its other absent categories are unknown and skipped;
- crowd (``iscrowd``) objects are never targets: a prediction that lies mostly inside a crowd
  region of its unit (intersection >= 0.5 of its own area, pycocotools' crowd IoU) and matches
  no object at IoU >= 0.5 is ignored, as COCO ignores detections on crowds; a unit whose only
  objects are crowds is skipped (the concept is there, but there is no instance to find).
  SAM3 instead drops crowd GT and counts predictions on them as FPs.

Predictions in skipped units are ignored. Undefined values are None, not 0: cgF1 and IL_MCC
need both positive and negative units (``cgF1_defined``), pmF1 and recalls positive units,
IL_FPR negative units.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask
from scipy.optimize import linear_sum_assignment

from sam3_lora.evaluation.inputs import EvalInputs

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""COCOeval's ``iouThrs``: 0.50, 0.55, ..., 0.95 (index 0 is 0.5, index 5 is 0.75)."""
CROWD_COVER = 0.5
"""A prediction this much inside a crowd region (and matching no object) is ignored."""
CATEGORY_KEYS = ("cgF1", "cgF1_50", "cgF1_75", "pmF1", "IL_MCC")


@dataclass
class UnitTable:
    """Per evaluated unit: ``category`` (U,) ids, ``num_gt`` / ``num_dt`` (U,) int counts of
    target objects and kept predictions, ``tp`` (U, T) int matches per IoU threshold."""

    category: list
    num_gt: np.ndarray
    num_dt: np.ndarray
    tp: np.ndarray
    skipped: int


def cgf1_from_inputs(inputs: EvalInputs, score_threshold: float = 0.5) -> dict:
    """The cgF1 family of validated inputs; see the module docstring for every definition."""
    table = unit_table(inputs, score_threshold)
    out = summarize(table.num_gt, table.num_dt, table.tp)
    out["skipped_units"] = table.skipped
    categories = np.array(table.category, dtype=object)
    out["per_category"] = {}
    for category_id, name in inputs.category_names.items():
        rows = categories == category_id if len(categories) else np.zeros(0, dtype=bool)
        values = summarize(table.num_gt[rows], table.num_dt[rows], table.tp[rows])
        out["per_category"][name] = {key: values[key] for key in CATEGORY_KEYS}
    return out


def unit_table(inputs: EvalInputs, score_threshold: float) -> UnitTable:
    """Match every evaluated unit; predictions below ``score_threshold`` are dropped first."""
    key = "segmentation" if inputs.iou_type == "segm" else "bbox"
    gts, dts = defaultdict(list), defaultdict(list)
    for ann in inputs.gt["annotations"]:
        gts[ann["image_id"], ann["category_id"]].append(ann)
    for pred in inputs.predictions:
        if pred["score"] >= score_threshold:
            dts[pred["image_id"], pred["category_id"]].append(pred[key])
    category_ids = [c["id"] for c in inputs.gt["categories"]]
    rows, skipped = [], 0
    for image in inputs.gt["images"]:
        for category_id in category_ids:
            unit_gt = gts.get((image["id"], category_id), [])
            if not _evaluated(image, category_id, unit_gt):
                skipped += 1
                continue
            targets = [a[key] for a in unit_gt if not a["iscrowd"]]
            crowds = [a[key] for a in unit_gt if a["iscrowd"]]
            num_dt, tp = match_unit(dts.get((image["id"], category_id), []), targets, crowds)
            rows.append((category_id, len(targets), num_dt, tp))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return UnitTable([], empty, empty, np.zeros((0, len(IOU_THRESHOLDS)), np.int64), skipped)
    category, num_gt, num_dt, tp = zip(*rows, strict=True)
    return UnitTable(list(category), np.array(num_gt), np.array(num_dt), np.stack(tp), skipped)


def _evaluated(image: dict, category_id, unit_gt: list[dict]) -> bool:
    """Whether this (image, category) unit is exhaustively annotated (see module docstring)."""
    if image.get("is_instance_exhaustive") is False:
        return False
    if category_id in (image.get("not_exhaustive_category_ids") or ()):
        return False
    if unit_gt:
        return not all(a["iscrowd"] for a in unit_gt)
    negatives = image.get("neg_category_ids") or ()
    return not negatives or category_id in negatives


def match_unit(preds: list, targets: list, crowds: list) -> tuple[int, np.ndarray]:
    """One unit: (number of predictions counted, (T,) TPs per IoU threshold).

    ``preds`` / ``targets`` / ``crowds``: regions in one format, RLE dicts or [x, y, w, h]
    boxes (pycocotools' ``mask.iou`` takes both).
    """
    tp = np.zeros(len(IOU_THRESHOLDS), dtype=np.int64)
    if not preds:
        return 0, tp
    ious = _iou(preds, targets, crowd=False)  # (D, G)
    if crowds:
        inside = _iou(preds, crowds, crowd=True).max(axis=1)  # intersection / pred area
        best = ious.max(axis=1) if targets else np.zeros(len(preds))
        ious = ious[~((inside >= CROWD_COVER) & (best < CROWD_COVER))]
    if ious.size:
        rows, cols = linear_sum_assignment(ious, maximize=True)
        tp = (ious[rows, cols][:, None] >= IOU_THRESHOLDS).sum(axis=0)
    return ious.shape[0], tp


def _iou(preds: list, regions: list, crowd: bool) -> np.ndarray:
    """(len(preds), len(regions)) IoU in one pycocotools call."""
    if not regions:
        return np.zeros((len(preds), 0))
    return np.asarray(coco_mask.iou(preds, regions, [int(crowd)] * len(regions)),
                      dtype=np.float64).reshape(len(preds), len(regions))


def summarize(num_gt: np.ndarray, num_dt: np.ndarray, tp: np.ndarray) -> dict:
    """The family from unit counts: ``num_gt``, ``num_dt`` (U,), ``tp`` (U, T)."""
    positive, predicted = num_gt > 0, num_dt > 0
    il_tp, il_fn = int(np.sum(positive & predicted)), int(np.sum(positive & ~predicted))
    il_fp, il_tn = int(np.sum(~positive & predicted)), int(np.sum(~positive & ~predicted))
    tps = tp.sum(axis=0).astype(np.float64)  # (T,)
    fns = (num_gt[:, None] - tp).sum(axis=0)
    pm_fps = (num_dt[:, None] - tp)[positive & predicted].sum(axis=0)
    precision = tps / (tps + pm_fps + 1e-4)
    recall = tps / (tps + fns + 1e-4)
    f1 = 2 * precision * recall / (precision + recall + 1e-4)
    mcc = (il_tp * il_tn - il_fp * il_fn) / (
        (float(il_tp + il_fp) * (il_tp + il_fn) * (il_tn + il_fp) * (il_tn + il_fn)) ** 0.5 + 1e-6)
    has_pos, has_neg = il_tp + il_fn > 0, il_tn + il_fp > 0
    defined = has_pos and has_neg
    cgf1 = f1 * mcc
    return {
        "cgF1": _num(cgf1.mean(), defined), "cgF1_50": _num(cgf1[0], defined),
        "cgF1_75": _num(cgf1[5], defined),
        "pmF1": _num(f1.mean(), has_pos), "pmF1_50": _num(f1[0], has_pos),
        "pmF1_75": _num(f1[5], has_pos),
        "pmPrecision": _num(precision.mean(), has_pos), "pmRecall": _num(recall.mean(), has_pos),
        "IL_precision": il_tp / (il_tp + il_fp + 1e-6),
        "IL_recall": _num(il_tp / (il_tp + il_fn + 1e-6), has_pos),
        "IL_F1": _num(_il_f1(il_tp, il_fp, il_fn), has_pos),
        "IL_FPR": _num(il_fp / (il_fp + il_tn + 1e-6), has_neg), "IL_MCC": _num(mcc, defined),
        "IL_TP": il_tp, "IL_FP": il_fp, "IL_TN": il_tn, "IL_FN": il_fn, "cgF1_defined": defined,
    }


def _il_f1(tp: int, fp: int, fn: int) -> float:
    precision, recall = tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6)
    return 2 * precision * recall / (precision + recall + 1e-6)


def _num(value: float, defined: bool) -> float | None:
    return float(value) if defined else None
