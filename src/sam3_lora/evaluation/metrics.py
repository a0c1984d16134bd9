"""Evaluation metrics: COCO mAP (pycocotools' COCOeval) and SAM3's cgF1 family.

- ``coco_metrics(gt, predictions, iou_type)``: mAP, mAP50, mAP75, mAP_small/medium/large and
  per-category AP/AP50/AP75, straight from COCOeval (its -1, "no GT of that kind", becomes
  None), plus ``curves``: COCOeval's precision array for PR curves.
- ``cgf1_metrics(gt, predictions, iou_type, score_threshold)``: SAM3's cgF1, pmF1, IL_MCC, ...
  (definitions in ``evaluation.cgf1``).
- ``evaluate_files(gt_path, predictions_path, ...)``: both, from a COCO GT file and a COCO
  results file, as ONE flat JSON-ready dict (``METRIC_KEYS`` plus ``per_category``).

All values are fractions in [0, 1] (IL_MCC and cgF1 in [-1, 1]), None where undefined.
Inputs are checked first (``evaluation.inputs.prepare``): bad ones raise a one-line ``DataError``.

mAP is plain COCO: every image counts as exhaustively annotated for every category (LVIS
``neg_category_ids`` / ``not_exhaustive_category_ids`` are not used there, only by cgF1).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora.errors import Sam3LoraError
from sam3_lora.evaluation.cgf1 import cgf1_from_inputs
from sam3_lora.evaluation.inputs import EvalInputs, load_json, prepare

COCO_KEYS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
CGF1_KEYS = ("cgF1", "cgF1_50", "cgF1_75", "pmF1", "pmF1_50", "pmF1_75", "pmPrecision",
             "pmRecall", "IL_precision", "IL_recall", "IL_F1", "IL_FPR", "IL_MCC",
             "IL_TP", "IL_FP", "IL_TN", "IL_FN", "cgF1_defined", "skipped_units")
METRIC_KEYS = (*COCO_KEYS, *CGF1_KEYS, "iou_type", "score_threshold", "num_predictions",
               "per_category")
"""The keys of ``evaluate_files``' result, in order. ``per_category`` maps each category
name to {AP, AP50, AP75, cgF1, cgF1_50, cgF1_75, pmF1, IL_MCC}."""
TABLE_KEYS = ("mAP", "mAP50", "mAP75", "cgF1", "cgF1_50", "cgF1_75", "pmF1", "IL_MCC",
              "IL_precision", "IL_recall", "presence_AUC")
_STATS = dict(zip(COCO_KEYS, range(6), strict=True))  # COCOeval.stats indices


def coco_metrics(gt: dict, predictions: list[dict], iou_type: str = "segm") -> dict:
    """COCO mAP of COCO results against a COCO GT dict, by pycocotools' COCOeval.

    Returns the ``COCO_KEYS`` (fractions, None for COCO's -1), ``per_category`` {name: {AP,
    AP50, AP75}}, and ``curves``: {"precision": (T, R, K, A, M) array (COCOeval's
    eval["precision"]; -1 where undefined), "iou_thresholds": [T], "recall_thresholds": [R],
    "category_names": [K]} (A: all/small/medium/large, M: maxDets 1/10/100). Drop
    ``curves`` before writing JSON.
    """
    return coco_from_inputs(prepare(gt, predictions, iou_type))


def cgf1_metrics(gt: dict, predictions: list[dict], iou_type: str = "segm",
                 score_threshold: float = 0.5) -> dict:
    """SAM3's cgF1 family (see ``evaluation.cgf1``): the ``CGF1_KEYS`` and ``per_category`` {name:
    {cgF1, cgF1_50, cgF1_75, pmF1, IL_MCC}}; cgF1 and IL_MCC are None when undefined."""
    _check_threshold(score_threshold)
    return cgf1_from_inputs(prepare(gt, predictions, iou_type), score_threshold)


def coco_from_inputs(inputs: EvalInputs) -> dict:
    """``coco_metrics`` of already validated inputs."""
    evaluator = _run_cocoeval(inputs)
    out: dict[str, Any] = {key: _fraction(evaluator.stats[i]) for key, i in _STATS.items()}
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    names = [inputs.category_names[c] for c in evaluator.params.catIds]
    out["per_category"] = {
        name: {"AP": _mean_ap(precision[:, :, k, 0, -1]),
               "AP50": _mean_ap(precision[0, :, k, 0, -1]),
               "AP75": _mean_ap(precision[5, :, k, 0, -1])}
        for k, name in enumerate(names)}
    out["curves"] = {"precision": precision,
                     "iou_thresholds": [float(t) for t in evaluator.params.iouThrs],
                     "recall_thresholds": [float(r) for r in evaluator.params.recThrs],
                     "category_names": names}
    return out


def _run_cocoeval(inputs: EvalInputs) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = inputs.gt
        coco_gt.createIndex()
        # loadRes, as a user running COCOeval would; it cannot take an empty list.
        results = [dict(r) for r in inputs.predictions]  # loadRes adds id/area to each
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(inputs.gt)
        evaluator = COCOeval(coco_gt, coco_dt, inputs.iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _empty_results(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    coco.createIndex()
    return coco


def _mean_ap(values: np.ndarray) -> float | None:
    """COCOeval's summary rule: the mean of the entries > -1, None if there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _fraction(value: float) -> float | None:
    return None if value == -1 else float(value)


def _check_threshold(score_threshold: float) -> None:
    if not 0.0 <= score_threshold <= 1.0:
        raise Sam3LoraError(f"score threshold {score_threshold} is outside [0, 1]; give a "
                            "probability such as 0.5 (SAM3's)")


def evaluate_files(gt_path: str | os.PathLike, predictions_path: str | os.PathLike,
                   iou_type: str = "segm", score_threshold: float = 0.5) -> dict:
    """COCO mAP and cgF1 of a COCO results file against a COCO GT file, as one flat dict.

    Keys: ``METRIC_KEYS`` (fractions in [0, 1] or None where undefined, IL_* counts as ints,
    ``cgF1_defined`` bool), ``per_category`` nested. JSON-ready (no arrays).
    """
    _check_threshold(score_threshold)
    gt = load_json(gt_path, "COCO ground-truth file")
    predictions = load_json(predictions_path, "COCO results (predictions) file", empty=[])
    inputs = prepare(gt, predictions, iou_type, gt_name=str(gt_path),
                     predictions_name=str(predictions_path))
    return combine(coco_from_inputs(inputs), cgf1_from_inputs(inputs, score_threshold),
                   iou_type=iou_type, score_threshold=score_threshold,
                   num_predictions=len(inputs.predictions))


def combine(coco: dict, cgf1: dict, **extra: Any) -> dict:
    """One flat dict of both results (``curves`` dropped), per-category values merged."""
    per_category = {name: dict(values) for name, values in coco["per_category"].items()}
    for name, values in cgf1["per_category"].items():
        per_category.setdefault(name, {}).update(values)
    flat = {key: coco[key] for key in COCO_KEYS}
    flat.update({key: cgf1[key] for key in CGF1_KEYS})
    flat.update(extra)
    flat["per_category"] = per_category
    return flat


def format_table(metrics: dict, base: dict | None = None) -> str:
    """A short readable table: overall values, then one row per category; with ``base``
    (the base model's metrics) each value gets the base's beside it and the change."""
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    def change(new: Any, old: Any) -> str:
        return "n/a" if new is None or old is None else f"{new - old:+.4f}"

    # Why boxes were scored where masks were expected (``validate`` on a box-only split).
    note = [f"box metrics: {metrics['iou_type_reason']}"] if metrics.get("iou_type_reason") else []
    if base is not None:
        return "\n".join([*note, _format_comparison(metrics, base, cell, change)])
    lines = note + [f"{key:<14}{cell(metrics.get(key)):>8}" for key in TABLE_KEYS if key in metrics]
    if metrics.get("cgF1_defined") is False:
        lines.append("cgF1/IL_MCC n/a: the GT has no negative (image, category) units "
                     "(or no positive ones)")
    per_category = metrics.get("per_category") or {}
    if per_category:
        columns = ("AP", "AP50", "AP75", "cgF1", "pmF1", "IL_MCC")
        width = max(8, *(len(name) for name in per_category)) + 2
        lines += ["", f"{'category':<{width}}" + "".join(f"{c:>8}" for c in columns)]
        lines += [f"{name:<{width}}" + "".join(f"{cell(values.get(c)):>8}" for c in columns)
                  for name, values in per_category.items()]
    return "\n".join(lines)


def _format_comparison(metrics: dict, base: dict, cell, change) -> str:
    lines = [f"{'':<14}{'adapted':>9}{'base':>9}{'change':>9}"]
    lines += [f"{key:<14}{cell(metrics.get(key)):>9}{cell(base.get(key)):>9}{change(metrics.get(key), base.get(key)):>9}"
              for key in TABLE_KEYS if key in metrics]
    per_category = metrics.get("per_category") or {}
    if per_category:
        width = max(8, *(len(name) for name in per_category)) + 2
        lines += ["", f"{'category':<{width}}{'AP':>9}{'base AP':>9}{'change':>9}{'cgF1':>9}{'base':>9}"]
        for name, values in per_category.items():
            old = (base.get("per_category") or {}).get(name, {})
            lines.append(f"{name:<{width}}{cell(values.get('AP')):>9}{cell(old.get('AP')):>9}"
                         f"{change(values.get('AP'), old.get('AP')):>9}{cell(values.get('cgF1')):>9}"
                         f"{cell(old.get('cgF1')):>9}")
    return "\n".join(lines)
