"""Hand-built COCO ground truth and predictions shared by the evaluation tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as coco_mask


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


# Units: (image 1, a) positive with 2 objects, (image 2, b) positive with 1, and the
# negatives (1, b), (2, a), (3, a), (3, b).
HAND_GT = gt_file([image(1), image(2), image(3)], [
    box_ann(1, 1, [0, 0, 10, 10]), box_ann(1, 1, [50, 50, 20, 20]), box_ann(2, 2, [5, 5, 30, 30])])
PERFECT = [box_pred(1, 1, [0, 0, 10, 10]), box_pred(1, 1, [50, 50, 20, 20]),
           box_pred(2, 2, [5, 5, 30, 30])]

GOOD = {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rect_rle(0, 0, 10, 10)}
