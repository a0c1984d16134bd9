"""SAM3's cgF1 against hand-derived values and an independent brute-force implementation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam3_lora.evaluation.metrics import (
    cgf1_metrics,
    coco_metrics,
)
from tests.evaluation.cases import (
    HAND_GT,
    PERFECT,
    assert_close,
    box_ann,
    box_pred,
    ellipse,
    gt_file,
    image,
    rect_rle,
    sam3_formulas,
)

# ------------------------------------------------------------ cgF1, hand-built cases

def test_cgf1_all_correct():
    result = cgf1_metrics(HAND_GT, PERFECT, iou_type="bbox")
    # TP = 3 at every threshold, no FP, no FN; IL_TP = 2, IL_TN = 4, IL_FP = IL_FN = 0:
    # pmP = R = 3 / (3 + 1e-4); IL_MCC = (2 * 4) / (sqrt(2 * 2 * 4 * 4) + 1e-6) = 8 / (8 + 1e-6).
    precision = 3 / 3.0001
    pmf1 = 2 * precision * precision / (2 * precision + 1e-4)
    mcc = 8 / (8 + 1e-6)
    assert_close(result, {"pmF1": pmf1, "IL_MCC": mcc, "cgF1": pmf1 * mcc, "cgF1_50": pmf1 * mcc,
                          "cgF1_75": pmf1 * mcc})
    assert (result["IL_TP"], result["IL_FP"], result["IL_TN"], result["IL_FN"]) == (2, 0, 4, 0)
    assert result["cgF1_defined"] is True


def test_cgf1_all_correct_with_masks():
    gt = gt_file([image(1), image(2)], [
        {**box_ann(1, 1, [0, 0, 10, 10]), "segmentation": rect_rle(0, 0, 10, 10)}])
    preds = [{"image_id": 1, "category_id": 1, "score": 0.7, "segmentation": rect_rle(0, 0, 10, 10)}]
    result = cgf1_metrics(gt, preds, iou_type="segm")
    # 1 TP; units: 1 positive predicted, 3 negatives silent -> MCC = 3 / (sqrt(1*1*3*3) + 1e-6).
    precision = 1 / 1.0001
    pmf1 = 2 * precision * precision / (2 * precision + 1e-4)
    assert_close(result, {"cgF1": pmf1 * 3 / (3 + 1e-6), "pmF1": pmf1})


def test_cgf1_all_missed_is_zero_while_map_is_perfect():
    # The same boxes, all scored 0.3 < 0.5: nothing counts for cgF1. IL_TP = 0, IL_FN = 2,
    # IL_TN = 4: MCC = (0 * 4 - 0 * 2) / (sqrt(0 * 2 * 4 * 6) + 1e-6) = 0; TP = 0 so pmF1 = 0.
    missed = [dict(p, score=0.3) for p in PERFECT]
    result = cgf1_metrics(HAND_GT, missed, iou_type="bbox")
    assert_close(result, {"cgF1": 0.0, "pmF1": 0.0, "IL_MCC": 0.0, "IL_recall": 0.0})
    assert coco_metrics(HAND_GT, missed, iou_type="bbox")["mAP"] == pytest.approx(1.0)


def test_cgf1_false_positives_on_negative_units_only():
    # Perfect positives plus a box on the negative unit (3, a). pmF1 ignores FPs on negative
    # units, so it equals the all-correct pmF1; IL_TP = 2, IL_FP = 1, IL_TN = 3, IL_FN = 0:
    # MCC = (2 * 3 - 1 * 0) / (sqrt(3 * 2 * 4 * 3) + 1e-6) = 6 / (sqrt(72) + 1e-6).
    result = cgf1_metrics(HAND_GT, PERFECT + [box_pred(3, 1, [1, 1, 5, 5])], iou_type="bbox")
    counts = ([3] * 10, [0] * 10, [0] * 10, (2, 1, 3, 0))
    assert_close(result, sam3_formulas(*counts))
    assert result["IL_MCC"] == pytest.approx(6 / math.sqrt(72), abs=1e-6)
    assert result["IL_FPR"] == pytest.approx(1 / 4, abs=1e-6)


def test_cgf1_mixed_ious_at_the_05_and_075_boundaries():
    gt = gt_file([image(1), image(2)], [
        box_ann(1, 1, [0, 0, 10, 10]), box_ann(1, 1, [20, 0, 10, 10]),
        box_ann(1, 1, [40, 0, 10, 10]), box_ann(1, 1, [60, 0, 10, 10])], categories=[(1, "a")])
    preds = [box_pred(1, 1, [0, 0, 10, 5]),      # IoU 50/100 = 0.5 exactly
             box_pred(1, 1, [20, 0, 10, 7.5]),   # IoU 75/100 = 0.75 exactly
             box_pred(1, 1, [40, 0, 10, 9.9]),   # IoU 0.99
             box_pred(1, 1, [80, 80, 10, 10])]   # IoU 0 with everything; [60, 0] is missed
    result = cgf1_metrics(gt, preds, iou_type="bbox")
    # IoU >= t: t = 0.50 -> 3 TPs; 0.55 .. 0.75 -> 2 (0.75 counts at 0.75); 0.80 .. 0.95 -> 1.
    tp = [3, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    fp = [4 - t for t in tp]  # 4 predictions, all in the one positive unit
    fn = [4 - t for t in tp]  # 4 objects
    assert_close(result, sam3_formulas(tp, fp, fn, (1, 0, 1, 0)))  # units: (1, a) +, (2, a) -
    # At 0.5: pmP = R = 3 / (4 + 1e-4), so pmF1_50 = 0.75 up to the epsilons.
    assert result["pmF1_50"] == pytest.approx(0.75, abs=1e-3)
    assert result["pmF1_75"] == pytest.approx(0.5, abs=1e-3)


def test_no_negative_units_leaves_cgf1_undefined():
    gt = gt_file([image(1), image(2)], [box_ann(1, 1, [0, 0, 10, 10]), box_ann(2, 1, [0, 0, 9, 9])],
                 categories=[(1, "a")])
    result = cgf1_metrics(gt, [box_pred(1, 1, [0, 0, 10, 10])], iou_type="bbox")
    assert result["cgF1_defined"] is False
    assert result["cgF1"] is None and result["IL_MCC"] is None and result["cgF1_75"] is None
    assert result["IL_FPR"] is None and result["per_category"]["a"]["cgF1"] is None
    assert result["pmF1"] > 0.6  # still defined: 1 of 2 objects found


def test_lvis_lists_and_is_instance_exhaustive_choose_the_units():
    images = [image(1, neg_category_ids=[2], not_exhaustive_category_ids=[1]),
              image(2, neg_category_ids=[3]), image(3, is_instance_exhaustive=False)]
    gt = gt_file(images, [box_ann(1, 1, [0, 0, 10, 10]), box_ann(2, 1, [0, 0, 10, 10])],
                 categories=[(1, "a"), (2, "b"), (3, "c")])
    # Evaluated: (1, b) negative, (2, a) positive, (2, c) negative. Skipped: (1, a) not
    # exhaustive, (1, c) and (2, b) unknown, all of image 3.
    preds = [box_pred(1, 1, [30, 30, 5, 5]), box_pred(2, 2, [0, 0, 5, 5]),
             box_pred(3, 3, [0, 0, 5, 5]), box_pred(2, 1, [0, 0, 10, 10])]
    result = cgf1_metrics(gt, preds, iou_type="bbox")
    assert (result["IL_TP"], result["IL_FP"], result["IL_TN"], result["IL_FN"]) == (1, 0, 2, 0)
    assert result["skipped_units"] == 6


def test_crowd_regions_are_neither_targets_nor_false_positives():
    gt = gt_file([image(1), image(2)], [box_ann(1, 1, [0, 0, 10, 10]),
                                         box_ann(1, 1, [40, 40, 50, 50], iscrowd=1),
                                         box_ann(2, 1, [0, 0, 50, 50], iscrowd=1)],
                 categories=[(1, "a")])
    preds = [box_pred(1, 1, [0, 0, 10, 10]), box_pred(1, 1, [45, 45, 10, 10]),  # inside crowd
             box_pred(2, 1, [60, 60, 10, 10])]  # unit (2, a) has only a crowd: skipped
    result = cgf1_metrics(gt, preds, iou_type="bbox")
    assert (result["IL_TP"], result["IL_FP"], result["IL_TN"], result["IL_FN"]) == (1, 0, 0, 0)
    assert result["skipped_units"] == 1 and result["pmF1"] == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------- cgF1 against an independent implementation


def reference_cgf1(gt: dict, preds: list[dict], iou_type: str, threshold: float = 0.5) -> dict:
    """Plain loops, brute-force best matching and numpy IoUs; the rules of cgf1.py's docs."""
    thresholds = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    tp, fn, pm_fp = [0] * 10, [0] * 10, [0] * 10
    il = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for img in gt["images"]:
        for category in [c["id"] for c in gt["categories"]]:
            anns = [a for a in gt["annotations"]
                    if a["image_id"] == img["id"] and a["category_id"] == category]
            if img.get("is_instance_exhaustive") is False:
                continue
            if category in img.get("not_exhaustive_category_ids", []):
                continue
            if not anns and img.get("neg_category_ids") and category not in img["neg_category_ids"]:
                continue
            if anns and all(a["iscrowd"] for a in anns):
                continue
            shape = (img["height"], img["width"])
            targets = [_region(a, iou_type, shape) for a in anns if not a["iscrowd"]]
            crowds = [_region(a, iou_type, shape) for a in anns if a["iscrowd"]]
            dets = [_region(p, iou_type, shape) for p in preds if p["image_id"] == img["id"]
                    and p["category_id"] == category and p["score"] >= threshold]
            dets = [d for d in dets if not (any(_inter(d, c) / _area(d) >= 0.5 for c in crowds)
                                            and all(_ref_iou(d, t) < 0.5 for t in targets))]
            matched = _best_matching([[_ref_iou(d, t) for t in targets] for d in dets], len(targets))
            for i, t in enumerate(thresholds):
                hits = sum(v >= t for v in matched)
                tp[i] += hits
                fn[i] += len(targets) - hits
                if targets and dets:
                    pm_fp[i] += len(dets) - hits
            if targets and dets:
                il["tp"] += 1
            elif targets:
                il["fn"] += 1
            elif dets:
                il["fp"] += 1
            else:
                il["tn"] += 1
    return sam3_formulas(tp, pm_fp, fn, (il["tp"], il["fp"], il["tn"], il["fn"]))


def _region(entry: dict, iou_type: str, shape) -> np.ndarray:
    """A boolean mask (segm) or [x1, y1, x2, y2] floats (bbox)."""
    if iou_type == "bbox":
        x, y, w, h = entry["bbox"]
        return np.array([x, y, x + w, y + h], dtype=np.float64)
    seg = entry["segmentation"]
    rle = coco_mask.frPyObjects(seg, *shape) if isinstance(seg, list) else dict(seg)
    if isinstance(rle, list):
        rle = coco_mask.merge(rle)
    return coco_mask.decode(rle).astype(bool)


def _area(r: np.ndarray) -> float:
    return float(r.sum()) if r.dtype == bool else float((r[2] - r[0]) * (r[3] - r[1]))


def _inter(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype == bool:
        return float((a & b).sum())
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = _inter(a, b)
    return inter / (_area(a) + _area(b) - inter)


def _best_matching(iou: list[list[float]], num_targets: int) -> list[float]:
    """IoUs of the one-to-one matching with the largest sum, by trying every one."""
    if not iou or not num_targets:
        return []
    d, g = len(iou), num_targets
    if d <= g:
        options = ([iou[i][p[i]] for i in range(d)] for p in itertools.permutations(range(g), d))
    else:
        options = ([iou[p[j]][j] for j in range(g)] for p in itertools.permutations(range(d), g))
    return max(options, key=sum)


def random_units(seed: int, iou_type: str) -> tuple[dict, list[dict]]:
    """5 images x 3 categories, <= 3 objects and <= 4 predictions per unit, crowds, LVIS lists."""
    rng = np.random.default_rng(seed)
    size = 48
    images = [image(i, size) for i in range(1, 6)]
    images[3].update(neg_category_ids=[1], not_exhaustive_category_ids=[2])
    anns, preds = [], []
    for img in images:
        for category in (1, 2, 3):
            polys = [ellipse(rng, size) for _ in range(rng.choice([0, 0, 1, 2, 3]))]
            for poly in polys:
                anns.append(_entry(img["id"], category, poly, size, iscrowd=int(rng.random() < 0.15)))
            guesses = [(np.array(p) + rng.normal(0, 3, len(p))).clip(0, size).tolist() for p in polys
                       if rng.random() < 0.7]
            guesses += [ellipse(rng, size) for _ in range(rng.integers(0, 3))]
            for poly in guesses[:4]:
                entry = _entry(img["id"], category, poly, size, score=float(rng.uniform(0.1, 1)))
                if iou_type == "bbox":
                    entry.pop("segmentation")
                preds.append(entry)
    return gt_file(images, anns, categories=[(1, "a"), (2, "b"), (3, "c")]), preds


def _entry(image_id, category, poly, size, **extra) -> dict:
    rle = coco_mask.frPyObjects([poly], size, size)[0]
    return {"image_id": image_id, "category_id": category, "bbox": coco_mask.toBbox(rle).tolist(),
            "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")}, **extra}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(6))
def test_cgf1_matches_an_independent_implementation(iou_type, seed):
    gt, preds = random_units(seed, iou_type)
    expected = reference_cgf1(gt, preds, iou_type)
    result = cgf1_metrics(gt, preds, iou_type=iou_type)
    assert result["cgF1_defined"]
    assert_close(result, expected, tol=1e-9)


