"""COCO mAP against pycocotools run directly, and the flat metrics dict."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3_lora.evaluation.metrics import (
    METRIC_KEYS,
    coco_metrics,
    evaluate_files,
)
from tests.evaluation.cases import (
    GOOD,
    box_ann,
    box_pred,
    ellipse,
    gt_file,
    image,
    write,
)

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




def test_evaluate_files_returns_the_documented_flat_keys(files):
    result = evaluate_files(*files([GOOD, {**GOOD, "image_id": 2, "score": 0.2}]))
    assert tuple(result) == METRIC_KEYS
    assert set(result["per_category"]) == {"a", "b"}
    assert set(result["per_category"]["a"]) == {"AP", "AP50", "AP75", "cgF1", "cgF1_50",
                                                "cgF1_75", "pmF1", "IL_MCC"}
    json.dumps(result, allow_nan=False)  # JSON-ready: no arrays, no NaN


