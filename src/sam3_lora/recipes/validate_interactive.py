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
    mIoU_by_clicks               mean IoU after 1, 2, ..., 20 clicks
    per_category                 the click metrics per category
    base                         the same for the base model (``compare_base``, an adapter)
    objects, split, weights

and report.md: the tables (base beside fine-tuned) and the IoU-vs-clicks plot.
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
from sam3_lora.evaluation.interactive import (
    click_ious,
    mask_iou,
    mean_iou_by_clicks,
    summarize_by_category,
)
from sam3_lora.evaluation.report import CLICK_SUMMARY_KEYS, write_report
from sam3_lora.files import write_file
from sam3_lora.lora.weights import adapter_disabled, has_adapter, load_finetuned
from sam3_lora.model.tracker import ObjectPredictor


def validate_interactive(config: Config, data: CocoSplit, out_dir: Path, *, weights: str | Path | None = None,
                         num_samples: int | None = None, no_lora: bool = False, compare_base: bool = False,
                         task: str | None = None) -> dict:
    """Score the tracker on ``data`` (its first ``num_samples`` images), and the base model
    beside it with ``compare_base`` when an adapter is on; writes ``out_dir/metrics.json``
    and ``report.md`` and returns metrics.json's content plus "output"."""
    model, processor, chosen = load_finetuned(config, weights, no_lora, task=task)   # task: lora.task_adapters
    objects = _objects_by_image(data, num_samples)
    metrics = score_clicks(model, processor, data, objects)
    base = None
    if compare_base and has_adapter(model):
        with adapter_disabled(model):
            base = score_clicks(model, processor, data, objects)
    summary = {**metrics, **({"base": base} if base else {}), "split": data.name,
               "weights": str(chosen or "base model")}
    curves = {"fine-tuned": metrics["mIoU_by_clicks"], "base": base["mIoU_by_clicks"]} if base else {
        summary["weights"]: metrics["mIoU_by_clicks"]}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_file(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        write_report(out_dir, metrics=summary, base_metrics=base, summary_keys=CLICK_SUMMARY_KEYS,
                     iou_by_clicks=curves, title=f"sam3-lora validation (clicks): {data.name} split, "
                                                 f"{summary['weights']}")
    except OSError as error:
        raise Sam3LoraError(f"{out_dir}: cannot write the results ({error.strerror}); choose another output "
                            f"folder", option="output") from None
    return {**summary, "output": str(out_dir)}


def _objects_by_image(data: CocoSplit, num_samples: int | None) -> dict[int, list]:
    """{image index: its objects with a mask}, over the first ``num_samples`` images."""
    images = set(range(len(data.images))[:num_samples] if num_samples else range(len(data.images)))
    by_image: dict[int, list] = {}
    for image_index, obj in object_index(data):
        if image_index in images:
            by_image.setdefault(image_index, []).append(obj)
    return by_image


def score_clicks(model, processor, data: CocoSplit, objects: dict[int, list]) -> dict:
    """The click metrics (overall, ``per_category``, ``mIoU_by_clicks``), ``box_mIoU`` and
    ``objects`` of ``model`` on ``objects`` ({image index: objects} of ``data``)."""
    results, box_ious = [], []
    for image_index, image_objects in tqdm(sorted(objects.items()), desc="validate", unit="image", leave=False):
        record = data.images[image_index]
        predictor = predictor_for(model, processor, open_image(record.path))
        for obj in image_objects:
            gt = object_mask(record, obj)
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
    return {**overall, "box_mIoU": float(np.mean(box_ious)),
            "mIoU_by_clicks": mean_iou_by_clicks([ious for _, ious in results]),
            "per_category": per_category, "objects": len(results)}


def predictor_for(model, processor, image) -> ObjectPredictor:
    """An ``ObjectPredictor`` on ``image`` (PIL), its pixels in the model's device and dtype."""
    parameter = next(model.parameters())
    pixels = processor.images([image]).to(parameter.device, parameter.dtype)
    return ObjectPredictor(model, pixels, (image.height, image.width))


def object_mask(record, obj) -> np.ndarray:
    """(H, W) bool mask of ``obj``, one object of the image ``record``."""
    return decode(to_rle(obj.segmentation, record.height, record.width)).astype(bool)


def _as_numpy(predictor: ObjectPredictor):
    """``evaluation.interactive``'s ``predict(points, labels) -> (H, W) bool array``."""
    return lambda points, labels: predictor(points, labels).numpy()


def format_interactive(summary: dict) -> str:
    """The printed table of ``validate_interactive``'s metrics: overall (the base's beside it
    when scored), then per category."""
    columns = ("mIoU_1", "mIoU_3", "mIoU_5", "NoC_85", "NoC_90", "box_mIoU")
    base = summary.get("base")
    rows = ([("base model", base), ("fine-tuned", summary)] if base else [("all objects", summary)])
    rows += [(f"  {name}", metrics) for name, metrics in sorted(summary["per_category"].items())]
    lines = [f"{'':<20}" + "".join(f"{name:>9}" for name in columns)]
    lines += [f"{name[:20]:<20}" + "".join(f"{metrics[c]:>9.3f}" if c in metrics else f"{'':>9}" for c in columns)
              for name, metrics in rows]
    lines.append(f"{summary['objects']} objects; {summary['over_max_90']} never reach IoU 90% in 20 clicks")
    return "\n".join(lines)
