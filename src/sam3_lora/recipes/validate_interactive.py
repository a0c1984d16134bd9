"""``validate`` for ``model.task: interactive``: the tracker scored by simulated clicks.

Every object of the split with a mask (``data.interactive.object_index``: box-only objects
and crowd regions left out, counted in a warning) is segmented by RITM's simulated user
(``evaluation.interactive``): each click at the deepest error pixel, up to 20, the model
refining its previous mask (``model.tracker.ObjectPredictor``). Then once more from the
object's tight box alone. At the original image resolution. metrics.json holds::

    mIoU_1, mIoU_3, mIoU_5       mean IoU after 1, 3, 5 clicks
    NoC_85, NoC_90               mean clicks to reach IoU 85% / 90% (20 if never)
    over_max_85, over_max_90     objects that never did
    box_mIoU                     mean IoU of the prediction from the tight box
    per_category                 the click metrics per category
    objects, split, weights
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.data.images import open_image
from sam3_lora.data.interactive import object_index
from sam3_lora.data.masks import mask_to_box
from sam3_lora.data.records import CocoSplit
from sam3_lora.data.rle import decode, to_rle
from sam3_lora.errors import Sam3LoraError
from sam3_lora.evaluation.interactive import click_ious, mask_iou, summarize_by_category
from sam3_lora.files import write_file
from sam3_lora.lora.weights import load_finetuned
from sam3_lora.model.tracker import ObjectPredictor


def validate_interactive(config: Config, data: CocoSplit, out_dir: Path, *, weights: str | Path | None = None,
                         num_samples: int | None = None, no_lora: bool = False) -> dict:
    """Score the tracker on ``data`` (its first ``num_samples`` images); writes
    ``out_dir/metrics.json`` and returns its content plus "output"."""
    model, processor, chosen = load_finetuned(config, weights, no_lora)
    images = set(range(len(data.images))[:num_samples] if num_samples else range(len(data.images)))
    by_image: dict[int, list] = {}
    for image_index, obj in object_index(data):
        if image_index in images:
            by_image.setdefault(image_index, []).append(obj)
    results, box_ious = [], []
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    for image_index, objects in tqdm(sorted(by_image.items()), desc="validate", unit="image", leave=False):
        record = data.images[image_index]
        pixels = processor.images([open_image(record.path)]).to(device, dtype)
        predictor = ObjectPredictor(model, pixels, (record.height, record.width))
        for obj in objects:
            gt = decode(to_rle(obj.segmentation, record.height, record.width)).astype(bool)
            if not gt.any():   # a degenerate polygon: nothing to click on
                continue
            predictor.reset()
            results.append((data.categories.get(obj.category_id, str(obj.category_id)),
                            click_ious(gt, _as_numpy(predictor))))
            predictor.reset()
            box = mask_to_box(torch.from_numpy(gt)) - torch.tensor([0.0, 0.0, 1.0, 1.0])   # last pixel, inclusive
            box_ious.append(mask_iou(gt, predictor(box=box).numpy()))
    if not results:
        raise Sam3LoraError(f"{data.annotation_path}: no object with a mask to click on; "
                            f"model.task=interactive is scored on segmentation masks")
    overall, per_category = summarize_by_category(results)
    summary = {**overall, "box_mIoU": float(np.mean(box_ious)), "per_category": per_category,
               "objects": len(results), "split": data.name, "weights": str(chosen or "base model")}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_file(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    except OSError as error:
        raise Sam3LoraError(f"{out_dir}: cannot write the results ({error.strerror}); choose another output "
                            f"folder", option="output") from None
    return {**summary, "output": str(out_dir)}


def _as_numpy(predictor: ObjectPredictor):
    """``evaluation.interactive``'s ``predict(points, labels) -> (H, W) bool array``."""
    return lambda points, labels: predictor(points, labels).numpy()


def format_interactive(summary: dict) -> str:
    """The printed table of ``validate_interactive``'s metrics: overall, then per category."""
    columns = ("mIoU_1", "mIoU_3", "mIoU_5", "NoC_85", "NoC_90")
    lines = [f"{'':<20}" + "".join(f"{name:>9}" for name in columns)]
    rows = [("all objects", summary), *sorted(summary["per_category"].items())]
    lines += [f"{name[:20]:<20}" + "".join(f"{metrics[c]:>9.3f}" for c in columns) for name, metrics in rows]
    lines.append(f"box_mIoU {summary['box_mIoU']:.3f} over {summary['objects']} objects "
                 f"({summary['over_max_90']} never reach IoU 90% in 20 clicks)")
    return "\n".join(lines)
