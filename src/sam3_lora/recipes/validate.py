"""``validate``: score a fine-tuned (or base) model on a split and write what was found.

Every category is prompted on every image (``evaluation.runner``), the answers are scored
(COCO mAP, SAM3's cgF1 family, presence ROC-AUC, validation loss), optionally beside the
base model (adapter switched off: one model in memory) and with the label-free forgetting
check (``evaluation.forgetting``). The tracker (``model.task: interactive``) is scored by
simulated clicks (``validate_interactive``), the video tracker (``video``) on a DAVIS /
YouTube-VOS split by J, F and J&F (``validate_video``).

Output folder (``output``, default ``output.dir/eval-SPLIT``): metrics.json,
predictions.json (and base_predictions.json), report.md with its figures. Masks are scored
(``iou_type`` segm) unless the split has no mask at all: then boxes are (bbox), and
``iou_type_reason`` in metrics.json, the report and the printed table say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sam3_lora.config import Config
from sam3_lora.data.coco.split import check_split, load_coco_split
from sam3_lora.data.images import open_image
from sam3_lora.data.records import CocoSplit
from sam3_lora.data.rle import as_compressed, decode, to_rle
from sam3_lora.errors import DataError, Sam3LoraError
from sam3_lora.evaluation.forgetting import forgetting_check
from sam3_lora.evaluation.report import select_examples, write_report
from sam3_lora.evaluation.runner import (
    SplitPredictions,
    SplitRunner,
    negative_units,
    presence_auc,
    score,
)
from sam3_lora.files import check_output
from sam3_lora.lora.weights import has_adapter, load_finetuned
from sam3_lora.model.precision import dtype_name, weights_dtype
from sam3_lora.recipes.validate_interactive import validate_interactive
from sam3_lora.recipes.validate_video import validate_video
from sam3_lora.training.mixture import task_config

BOX_ONLY_REASON = ("no object of this split has a mask, only boxes, so boxes are scored (COCO "
                   "iou_type bbox): mask mAP against boxes used as masks would not measure masks")


class EvaluationError(Sam3LoraError):
    """The split or the weights cannot be evaluated as asked."""


def split_folder(config: Config, split_name: str) -> Path:
    """``data.root``'s folder of the split ``split_name``, or one line when there is none."""
    folder = Path(config.data.root) / split_name
    if not folder.is_dir():
        raise DataError(f"data.root={config.data.root}: no {split_name}/ split to evaluate; "
                        f"choose the valid or test split, or point data.root at your dataset")
    return folder


def load_split(config: Config, split_name: str) -> CocoSplit:
    """The split ``split_name`` of ``data.root``, checked as training checks it."""
    folder = split_folder(config, split_name)
    return check_split(load_coco_split(folder, config.data.annotation_file, name=split_name),
                       config.data.skip_invalid)


def validate(config: Config, *, weights: str | Path | None = None, split: str | None = None,
             num_samples: int | None = None, no_lora: bool = False, compare_base: bool = False,
             positives_only: bool = False, output: str | Path | None = None, task: str | None = None) -> dict:
    """Score the adapted (or base) model on a split; writes metrics, predictions and a report.

    Returns metrics.json's content plus "output", the folder written. With
    ``model.task: interactive`` the tracker is scored by simulated clicks instead
    (``validate_interactive``: metrics.json and report.md), and with ``model.task: video``
    the video tracker by DAVIS's semi-supervised protocol on a video split (``validate_video``:
    J, F, J&F in metrics.json and report.md). A run on several datasets
    (``data.datasets``) is scored one ``task`` (dataset) at a time: its split, through its
    adapters (``lora.weights.task_adapter_folders``), into ``eval-SPLIT-TASK`` by default."""
    split_name = split or config.evaluation.split
    run_dir = Path(config.output.dir)
    if config.data.datasets or task is not None:
        config = task_config(config, task)
    out_dir = Path(output) if output else run_dir / (f"eval-{split_name}-{task}" if task else f"eval-{split_name}")
    if config.model.task == "video":
        check_output(out_dir, folder=True, what="output" if output else "output.dir")
        return validate_video(config, split_folder(config, split_name), out_dir, weights=weights, num_samples=num_samples,
                              no_lora=no_lora, compare_base=compare_base, task=task)
    if config.model.task == "interactive":
        check_output(out_dir, folder=True, what="output" if output else "output.dir")
        return validate_interactive(config, load_split(config, split_name), out_dir, weights=weights,
                                    num_samples=num_samples, no_lora=no_lora, compare_base=compare_base, task=task)
    if config.data.prompt_mode == "generic":
        raise EvaluationError("data.prompt_mode=generic: validate prompts each category by its name; "
                              "class-agnostic evaluation is not supported yet, use category mode")
    check_output(out_dir, folder=True, what="output" if output else "output.dir")   # before loading
    model, processor, chosen = load_finetuned(config, weights, no_lora, task=task)
    adapted = has_adapter(model)   # a whole model from method=full has no base to compare
    data = load_split(config, split_name)
    runner = SplitRunner(model, processor, data, config, num_samples)
    defined = negative_units(data, runner.image_ids) > 0
    if not defined and not positives_only:
        raise EvaluationError(
            f"{data.annotation_path}: every (image, prompt) unit is positive, so cgF1 cannot be measured; "
            f"add images lacking some categories, or score positives only (mAP only; cgF1 undefined)",
            option="positives_only")
    found = runner.predict()
    metrics, curves = score(runner.ground_truth(), found.results, config.evaluation.score_threshold)
    metrics.update(val_loss=found.val_loss, presence_AUC=presence_auc(found.units))
    base_metrics = base_found = None
    if compare_base and adapted:
        base_found = runner.predict(base=True, with_loss=False)
        base_metrics, _ = score(runner.ground_truth(), base_found.results, config.evaluation.score_threshold)
        base_metrics["presence_AUC"] = presence_auc(base_found.units)
    forgetting = forgetting_check(runner) if adapted else {}
    if metrics["iou_type"] == "bbox":
        metrics["iou_type_reason"] = BOX_ONLY_REASON
    summary = {**metrics, "split": split_name, "weights": str(chosen or "base model"),
               "model_dtype": dtype_name(weights_dtype(model)),
               "images": len(runner.image_ids), "units": len(found.units), "cgF1_defined": defined,
               **({"base": base_metrics} if base_metrics else {}), **({"forgetting": forgetting} if forgetting else {})}
    try:
        _write_outputs(out_dir, summary, found, base_found, runner, curves, config)
    except OSError as error:   # a full disk, a read-only mount: found only when writing
        raise EvaluationError(f"{out_dir}: cannot write the results ({error.strerror}); choose "
                              "another output folder", option="output") from None
    return {**summary, "output": str(out_dir)}


def _write_outputs(out_dir: Path, summary: dict, found: SplitPredictions, base_found, runner: SplitRunner,
                   curves: dict, config: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "predictions.json").write_text(json.dumps(found.results))
    if base_found is not None:
        (out_dir / "base_predictions.json").write_text(json.dumps(base_found.results))
    write_report(out_dir, metrics=summary, base_metrics=summary.get("base"), curves=curves,
                 # COCOeval orders categories by id: the precision array's K axis.
                 category_names=[runner.split.categories[c] for c in sorted(runner.split.categories)],
                 run_metrics_jsonl=Path(config.output.dir) / "metrics.jsonl",
                 examples=report_examples(found, runner), forgetting=summary.get("forgetting"),
                 notes=[f"Box metrics: {summary['iou_type_reason']}."] if "iou_type_reason" in summary else None,
                 title=f"sam3-lora validation: {runner.split.name} split, {summary['weights']}")


def report_examples(found: SplitPredictions, runner: SplitRunner) -> list[dict]:
    """The best, worst and random units, with their image, ground truth and predictions."""
    cfg = runner.config.evaluation
    # Among positive units: a refused negative scores 1 but shows an empty picture.
    candidates = [u for u in found.units if u["positive"]] or found.units
    examples = []
    for unit in select_examples(candidates, k=cfg.report_examples):
        record = runner.records[unit["image_id"]]
        size = (record.height, record.width)
        objects = [o for o in record.objects if o.category_id == unit["category_id"] and not o.iscrowd]
        # One entry per object: a box-only one has an empty mask, and is drawn by its box.
        gt = [decode(rle) if (rle := to_rle(o.segmentation, *size)) else np.zeros(size, np.uint8) for o in objects]
        mine = [r for r in found.results if r["image_id"] == unit["image_id"]
                and r["category_id"] == unit["category_id"] and r["score"] >= cfg.score_threshold]
        examples.append({
            "image": open_image(record.path), "prompt": unit["prompt"], "tag": unit["tag"],
            "unit_score": unit["unit_score"],
            "gt_masks": np.array(gt, dtype=bool).reshape(len(gt), *size),
            "gt_boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (o.bbox for o in objects)]).reshape(-1, 4),
            "pred_masks": np.array([decode(as_compressed(r["segmentation"])) for r in mine], dtype=bool).reshape(len(mine), *size),
            "pred_scores": np.array([r["score"] for r in mine]),
            "pred_boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]).reshape(-1, 4),
        })
    return examples
