"""Evaluation metrics: COCO mAP (against pycocotools run directly) and SAM3's cgF1 (against
hand-derived values and an independent brute-force implementation), plus input checking."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora.errors import DataError, Sam3LoraError
from sam3_lora.metrics import (
    METRIC_KEYS,
    cgf1_metrics,
    coco_metrics,
    evaluate_files,
)
from sam3_lora.rle_check import invalid_rle_strings

# ----------------------------------------------------------------------------- helpers


def rect_rle(x: int, y: int, w: int, h: int, height: int = 100, width: int = 100) -> dict:
    """A filled rectangle as a JSON-ready RLE (str counts)."""
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[y:y + h, x:x + w] = 1
    rle = coco_mask.encode(mask)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def ellipse(rng: np.random.Generator, size: int, scale: float = 1.0) -> list[float]:
    cx, cy = rng.uniform(4, size - 4, 2)
    rx, ry = rng.uniform(3, size / 3, 2) * scale
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    return np.stack([np.clip(cx + rx * np.cos(t), 0, size),
                     np.clip(cy + ry * np.sin(t), 0, size)], 1).ravel().tolist()


def gt_file(images: list[dict], annotations: list[dict], categories=((1, "a"), (2, "b"))) -> dict:
    """COCO GT; annotations get ids 1..N, iscrowd 0 and area (box area) unless given."""
    for n, ann in enumerate(annotations, start=1):
        ann.setdefault("id", n)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in categories]}


def image(image_id: int, size: int = 100, **extra) -> dict:
    return {"id": image_id, "width": size, "height": size, "file_name": f"{image_id}.png", **extra}


def box_ann(image_id: int, category_id: int, box: list[float], **extra) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, **extra}


def box_pred(image_id: int, category_id: int, box: list[float], score: float = 0.9) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def write(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def sam3_formulas(tp: list[int], fp_pm: list[int], fn: list[int], il: tuple) -> dict:
    """REFERENCE.md's formulas, from the counts (the hand cases' arithmetic)."""
    il_tp, il_fp, il_tn, il_fn = il
    mcc = (il_tp * il_tn - il_fp * il_fn) / (
        math.sqrt((il_tp + il_fp) * (il_tp + il_fn) * (il_tn + il_fp) * (il_tn + il_fn)) + 1e-6)
    f1 = []
    for t, p, n in zip(tp, fp_pm, fn, strict=True):
        precision, recall = t / (t + p + 1e-4), t / (t + n + 1e-4)
        f1.append(2 * precision * recall / (precision + recall + 1e-4))
    return {"pmF1": sum(f1) / 10, "IL_MCC": mcc, "cgF1": sum(f * mcc for f in f1) / 10,
            "cgF1_50": f1[0] * mcc, "cgF1_75": f1[5] * mcc}


def assert_close(result: dict, expected: dict, tol: float = 1e-12) -> None:
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=tol, rel=0), key


# ------------------------------------------------------------------ mAP == COCOeval


def random_coco(seed: int, iou_type: str) -> tuple[dict, list[dict]]:
    """3 categories on 8 images (polygon GT, a few crowds) and noisy predictions."""
    rng = np.random.default_rng(seed)
    size, images, anns, preds = 64, [image(i, 64) for i in range(1, 9)], [], []
    for img in images:
        for category in (1, 2, 3):
            for _ in range(rng.integers(0, 4)):
                poly = ellipse(rng, size)
                rle = coco_mask.frPyObjects([poly], size, size)[0]
                anns.append({"image_id": img["id"], "category_id": category, "segmentation": [poly],
                             "area": float(coco_mask.area(rle)), "bbox": coco_mask.toBbox(rle).tolist(),
                             "iscrowd": int(rng.random() < 0.1)})
                if rng.random() < 0.8:
                    jitter = (np.array(poly) + rng.normal(0, 2, len(poly))).clip(0, size).tolist()
                    preds.append(_pred(img["id"], category, jitter, rng.random(), iou_type, size))
            for _ in range(rng.integers(0, 3)):
                preds.append(_pred(img["id"], category, ellipse(rng, size), rng.random(), iou_type, size))
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": n} for c, n in ((1, "cat"), (2, "dog"), (3, "eel"))]}
    for n, ann in enumerate(anns, start=1):
        ann["id"] = n
    return gt, preds


def _pred(image_id, category, poly, score, iou_type, size) -> dict:
    rle = coco_mask.frPyObjects([poly], size, size)[0]
    pred = {"image_id": image_id, "category_id": category, "score": round(float(score), 6)}
    if iou_type == "segm":
        pred["segmentation"] = {"size": [size, size], "counts": rle["counts"].decode("ascii")}
    else:
        pred["bbox"] = coco_mask.toBbox(rle).tolist()
    return pred


def pycocotools_direct(gt_path: str, pred_path: str, iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(pred_path), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_cocoeval_run_directly(tmp_path, iou_type, seed):
    gt, preds = random_coco(seed, iou_type)
    gt_path, pred_path = write(tmp_path, "gt.json", gt), write(tmp_path, "pred.json", preds)
    expected = pycocotools_direct(gt_path, pred_path, iou_type)
    result = evaluate_files(gt_path, pred_path, iou_type=iou_type)
    keys = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
    for key, value in zip(keys, expected.stats[:6], strict=True):
        assert (result[key] is None) if value == -1 else result[key] == pytest.approx(value, abs=1e-9)
    curves = coco_metrics(gt, preds, iou_type=iou_type)["curves"]
    np.testing.assert_allclose(curves["precision"], expected.eval["precision"], atol=1e-9)
    for k, name in enumerate(("cat", "dog", "eel")):
        ap = expected.eval["precision"][:, :, k, 0, -1]
        assert result["per_category"][name]["AP"] == pytest.approx(ap[ap > -1].mean(), abs=1e-9)
        assert result["per_category"][name]["AP50"] == pytest.approx(ap[0][ap[0] > -1].mean(), abs=1e-9)


def test_gt_annotation_id_zero_is_still_matched():
    # COCOeval stores matched GT ids with 0 meaning "none": ids are renumbered from 1.
    gt = gt_file([image(1)], [box_ann(1, 1, [10, 10, 20, 20], id=0)])
    result = coco_metrics(gt, [box_pred(1, 1, [10, 10, 20, 20])], iou_type="bbox")
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mAP_large"] is None and result["per_category"]["b"]["AP"] is None  # no GT


# ------------------------------------------------------------ cgF1, hand-built cases

# Units: (image 1, a) positive with 2 objects, (image 2, b) positive with 1, and the
# negatives (1, b), (2, a), (3, a), (3, b).
HAND_GT = gt_file([image(1), image(2), image(3)], [
    box_ann(1, 1, [0, 0, 10, 10]), box_ann(1, 1, [50, 50, 20, 20]), box_ann(2, 2, [5, 5, 30, 30])])
PERFECT = [box_pred(1, 1, [0, 0, 10, 10]), box_pred(1, 1, [50, 50, 20, 20]),
           box_pred(2, 2, [5, 5, 30, 30])]


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


# ---------------------------------------------------------------------- bad inputs


@pytest.fixture
def files(tmp_path):
    """write(predictions) -> (gt path, predictions path) for HAND_GT with masks."""
    gt = json.loads(json.dumps(HAND_GT))
    for ann in gt["annotations"]:
        ann["segmentation"] = rect_rle(*[int(v) for v in ann["bbox"]])
    gt_path = write(tmp_path, "gt.json", gt)
    return lambda preds: (gt_path, write(tmp_path, "pred.json", preds))


GOOD = {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rect_rle(0, 0, 10, 10)}


@pytest.mark.parametrize(("prediction", "message"), [
    ({**GOOD, "image_id": 999}, r"prediction 1 has image_id 999, which is not in the ground truth.*same split"),
    ({**GOOD, "image_id": "1"}, r"image_id '1'.*numbers, not strings"),
    ({**GOOD, "category_id": 7}, r"category_id 7, which is not in the ground truth.*category ids"),
    ({**GOOD, "score": 1.5}, r"score 1.5; scores must be probabilities in \[0, 1\]"),
    ({**GOOD, "score": -0.1}, r"score -0.1"),
    ({**GOOD, "score": None}, r"score None"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": "0zzzzz"}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": "2"}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": [5, 3]}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [50, 50], "counts": "PP5"}}, r"size \[50, 50\].*\[100, 100\]"),
    ({**GOOD, "segmentation": [[0, 0, 5, 0, 5, 5]]}, r"list segmentation; predictions need an RLE"),
    ({k: v for k, v in GOOD.items() if k != "segmentation"}, r"no segmentation.*--iou-type bbox"),
])
def test_bad_prediction_gives_one_clear_line(files, prediction, message):
    with pytest.raises(DataError, match=message) as error:
        evaluate_files(*files([GOOD, prediction]))
    assert "\n" not in str(error.value) and "pred.json" in str(error.value)


def test_unknown_ids_are_counted(files):
    preds = [{**GOOD, "image_id": 50 + i} for i in range(4)]
    with pytest.raises(DataError, match=r"image_id 50.*and 3 more predictions with unknown image_ids"):
        evaluate_files(*files(preds))


@pytest.mark.parametrize("content", ["[]", " \n"])
def test_empty_predictions_warn_and_score_zero(files, tmp_path, content):
    gt_path, pred_path = files([])
    (tmp_path / "pred.json").write_text(content)
    with pytest.warns(UserWarning, match="no predictions"):
        result = evaluate_files(gt_path, pred_path)
    assert result["mAP"] == 0.0 and result["cgF1"] == 0.0 and result["pmF1"] == 0.0
    assert result["mAP_large"] is None and result["num_predictions"] == 0


@pytest.mark.parametrize(("gt_text", "message"), [
    ("[]", r"is a JSON list \(COCO results\?\), not a COCO ground-truth file"),
    ('{"info": {}}', r"not a COCO ground-truth file \(needs top-level 'images'"),
    ('{"images": [], "categories": []}', r"has no images"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [], "annotations": '
      '[{"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}'),
     r"annotation id 4 has image_id 2, which is not in 'images'"),
    ('{"images": [{"id": 1, "file_name": "x.png"}], "categories": []}', r"image id 1 has no valid height/width"),
    ('{"images": [{"id": 1, "width": 10, "height": 10}]', r"truncated"),
    ('{"images": [{"id": 1, "width": 10, "height": 10, "neg_category_ids": 3}], "categories": []}',
     r"image id 1 has neg_category_ids 3; write a list of category ids"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1}], '
      '"annotations": [{"id": 9, "image_id": 1, "category_id": 1, '
      '"segmentation": {"size": [10, 10], "counts": "0zz"}}]}'),
     r"annotation id 9 \(annotations\[0\]\) has a malformed RLE segmentation"),
])
def test_bad_ground_truth_gives_one_clear_line(tmp_path, gt_text, message):
    (tmp_path / "gt.json").write_text(gt_text)
    pred_path = write(tmp_path, "pred.json", [])
    with pytest.raises(DataError, match=message) as error:
        evaluate_files(tmp_path / "gt.json", pred_path)
    assert "\n" not in str(error.value) and "gt.json" in str(error.value)


def test_missing_files_and_swapped_arguments(files, tmp_path):
    gt_path, pred_path = files([GOOD])
    with pytest.raises(DataError, match=r"nope.json: no such file; give the path of the COCO ground"):
        evaluate_files(tmp_path / "nope.json", pred_path)
    with pytest.raises(DataError, match=r"is a COCO dataset \(it has 'annotations'\), not COCO results"):
        evaluate_files(gt_path, gt_path)
    with pytest.raises(Sam3LoraError, match=r"outside \[0, 1\]"):
        evaluate_files(gt_path, pred_path, score_threshold=5)


def test_evaluate_files_returns_the_documented_flat_keys(files):
    result = evaluate_files(*files([GOOD, {**GOOD, "image_id": 2, "score": 0.2}]))
    assert tuple(result) == METRIC_KEYS
    assert set(result["per_category"]) == {"a", "b"}
    assert set(result["per_category"]["a"]) == {"AP", "AP50", "AP75", "cgF1", "cgF1_50",
                                                "cgF1_75", "pmF1", "IL_MCC"}
    json.dumps(result, allow_nan=False)  # JSON-ready: no arrays, no NaN


# --------------------------------------------------------------- RLE string checking


def _decode_counts(s: bytes) -> list[int] | None:
    """pycocotools' rleFrString in plain Python; None where it would read past the end."""
    cnts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s) or not 48 <= s[p] < 112:
                return None
            c = s[p] - 48
            x |= (c & 0x1F) << 5 * k
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        cnts.append(x + cnts[-2] if len(cnts) > 2 else x)
    return cnts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=12).map(lambda b: bytes(48 + v % 70 for v in b)),
                          st.integers(0, 40)), min_size=1, max_size=20))
def test_rle_check_agrees_with_a_plain_decoder(items):
    strings, areas = zip(*items, strict=True)
    expected = [i for i, (s, a) in enumerate(items)
                if (c := _decode_counts(s)) is None or any(v < 0 or v >= 2**32 for v in c)
                or sum(c) != a]
    assert invalid_rle_strings(list(strings), np.array(areas)).tolist() == expected


def test_rle_check_accepts_real_encodings():
    rng = np.random.default_rng(0)
    masks = [(rng.random((h, w)) < rng.random()).astype(np.uint8)
             for h, w in rng.integers(1, 30, (200, 2))]
    strings = [coco_mask.encode(np.asfortranarray(m))["counts"] for m in masks]
    assert invalid_rle_strings(strings, np.array([m.size for m in masks])).size == 0
