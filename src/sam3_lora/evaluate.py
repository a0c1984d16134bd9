"""``sam3-lora validate``: run SAM3 (adapted or base) over a split and score it.

Every category is prompted on every image, as SAM3 validates: categories absent from an image
are the negative prompts that cgF1 (and a model that must refuse prompts) needs. Predictions
go through the shared post-processing (``postprocess.py``), are written in COCO results format
(RLE masks), and scored by ``metrics.py``: COCO mAP and SAM3's cgF1 family, plus the
validation loss with the training criterion. With ``compare_base`` the same model runs with
its adapter switched off (one model in memory), and the forgetting check measures how far the
adapted model's answers to out-of-domain ``retain_prompts`` moved from the base model's.

Output folder (``--output``, default ``output.dir/eval-SPLIT``): metrics.json,
predictions.json (and base_predictions.json), report.md with its figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.errors import Sam3LoraError
from sam3_lora.postprocess import Detections, postprocess


class EvaluationError(Sam3LoraError):
    """The split or the weights cannot be evaluated as asked."""


@dataclass
class SplitPredictions:
    """What a model answered on a split."""

    results: list[dict] = field(default_factory=list)
    """COCO results: image_id, category_id, score, bbox [x, y, w, h], segmentation (RLE)."""
    units: list[dict] = field(default_factory=list)
    """One per (image, prompt): image_id, category_id, prompt, positive, unit_score, presence."""
    val_loss: float | None = None


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE with a str ``counts`` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def coco_results(scores: np.ndarray, boxes: np.ndarray, masks: np.ndarray, image_id: int, category_id: int,
                 **extra) -> list[dict]:
    """One query's detections, (n,) scores, (n, 4) xyxy pixel boxes and (n, H, W) masks, as
    COCO results entries; ``extra`` fields are added to each entry."""
    return [{
        "image_id": image_id, "category_id": category_id, **extra, "score": round(float(score), 5),
        "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
        "segmentation": encode_mask(masks[i]),
    } for i, (score, (x1, y1, x2, y2)) in enumerate(zip(scores, boxes, strict=True))]


def ground_truth(split, image_ids: set[int] | None = None) -> dict:
    """The split as a COCO ground-truth dict (box-only objects get their box as the mask)."""
    from sam3_lora.data.masks import to_rle

    images, annotations = [], []
    for record in split.images:
        if image_ids is not None and record.id not in image_ids:
            continue
        images.append({"id": record.id, "file_name": record.file_name, "width": record.width,
                       "height": record.height, "neg_category_ids": record.neg_category_ids,
                       "not_exhaustive_category_ids": record.not_exhaustive_category_ids})
        for obj in record.objects:
            rle = to_rle(obj.segmentation, record.height, record.width) if obj.segmentation else None
            if rle is None:
                x, y, w, h = obj.bbox
                rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], record.height, record.width)[0]
            rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")
                   if isinstance(rle["counts"], bytes) else rle["counts"]}
            annotations.append({"id": obj.id, "image_id": record.id, "category_id": obj.category_id,
                                "bbox": list(obj.bbox), "area": float(mask_utils.area(_as_bytes(rle))),
                                "iscrowd": int(obj.iscrowd), "segmentation": rle})
    categories = [{"id": c, "name": name} for c, name in split.categories.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _as_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def unit_score(results: list[dict], gt_rles: list[dict], threshold: float) -> float:
    """How well one (image, prompt) unit was answered, in [0, 1], for picking report examples:
    a positive unit scores the mean best mask IoU of its objects among confident detections
    (``results``: the unit's COCO results entries); a negative unit scores 1 if nothing
    confident was detected, else 0."""
    confident = [r["segmentation"] for r in results if r["score"] >= threshold]
    if not gt_rles:
        return float(not confident)
    if not confident:
        return 0.0
    ious = mask_utils.iou([_as_bytes(r) for r in confident], [_as_bytes(g) for g in gt_rles], [0] * len(gt_rles))
    return float(np.asarray(ious).max(axis=0).mean())


class SplitRunner:
    """Runs one model over a split's (image, prompt) units; the same instance serves the
    adapted model and, with ``base=True``, its base (adapter switched off)."""

    def __init__(self, model, processor, split, config: Config, num_samples: int | None = None):
        self.model, self.processor, self.split, self.config = model, processor, split, config
        records = split.images[:num_samples] if num_samples else split.images
        self.image_ids = {r.id for r in records}
        self.subset = dataclasses.replace(split, images=list(records), problems=[])
        self.records = {r.id: r for r in records}
        self.device = next(model.parameters()).device

    def adapter_off(self, base: bool):
        """Context in which the model answers as its base (PEFT's disable_adapter)."""
        return self.model.disable_adapter() if base and hasattr(self.model, "disable_adapter") \
            else contextlib.nullcontext()

    @torch.no_grad()
    def predict(self, base: bool = False, with_loss: bool = True) -> SplitPredictions:
        from sam3_lora.data.collate import build_dataloader
        from sam3_lora.loss import Sam3Criterion, capture_aux_outputs
        from sam3_lora.model import forward_queries

        cfg = self.config
        loader = build_dataloader(self.subset, cfg.data, self.processor.image_size, cfg.training.batch_size,
                                  train=False, seed=cfg.training.seed)
        criterion = Sam3Criterion(weights=cfg.loss) if with_loss else None
        found, losses = SplitPredictions(), []
        self.model.eval()
        with self.adapter_off(base):
            for batch in tqdm(loader, desc="base" if base else "validate", unit="batch", leave=False):
                text = self.processor.text(batch["prompts"])
                with capture_aux_outputs(self.model) as aux:
                    outputs = forward_queries(self.model, batch["pixel_values"].to(self.device),
                                              batch["query_image_index"].to(self.device),
                                              text["input_ids"].to(self.device), text["attention_mask"].to(self.device))
                if criterion is not None:
                    targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
                               for t in batch["targets"]]
                    losses.append(criterion({**outputs, "aux_outputs": aux}, targets)["loss"].item())
                self._collect(batch, outputs, found)
        found.val_loss = float(np.mean(losses)) if losses else None
        return found

    def _collect(self, batch: dict, outputs, found: SplitPredictions) -> None:
        from sam3_lora.data.masks import to_rle

        image_of = batch["query_image_index"].tolist()
        sizes = [tuple(batch["orig_sizes"][i].tolist()) for i in image_of]
        detections = postprocess(outputs, sizes, threshold=self.config.evaluation.min_score,
                                 mask_nms_iou=self.config.evaluation.mask_nms_iou)
        for q, found_q in enumerate(detections):
            image_id = int(batch["image_ids"][image_of[q]])
            category_id = int(batch["query_category_ids"][q])
            record = self.records[image_id]
            entries = coco_results(found_q.scores, found_q.boxes, found_q.masks, image_id, category_id)
            found.results += entries
            gt = [to_rle(o.segmentation, record.height, record.width) for o in record.objects
                  if o.category_id == category_id and o.segmentation and not o.iscrowd]
            found.units.append({
                "image_id": image_id, "category_id": category_id, "prompt": batch["prompts"][q],
                "positive": bool(batch["is_positive"][q]), "presence": found_q.presence,
                "unit_score": unit_score(entries, [g for g in gt if g], self.config.evaluation.score_threshold),
            })

    def ground_truth(self) -> dict:
        return ground_truth(self.split, self.image_ids)


def negative_units(split, image_ids: set[int]) -> int:
    """(image, category) pairs whose category is absent and known absent: cgF1's negatives."""
    count = 0
    for record in split.images:
        if record.id in image_ids:
            present = {o.category_id for o in record.objects} | set(record.not_exhaustive_category_ids)
            pool = record.neg_category_ids or list(split.categories)
            count += sum(1 for c in pool if c in split.categories and c not in present)
    return count


def presence_auc(units: list[dict]) -> float | None:
    """ROC-AUC of the presence probability for present vs absent (image, prompt) units: the
    chance that a random present unit scores above a random absent one (ties count half).
    None without both kinds. Says whether the model listens to its prompt at all."""
    scores = np.array([u["presence"] for u in units], dtype=float)
    positive = np.array([u["positive"] for u in units], dtype=bool)
    if positive.all() or not positive.any():
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)   # average ranks: ties count half
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _matched_iou(adapted: Detections, base: Detections) -> list[float]:
    """IoUs of the one-to-one best matching between two detection sets' masks."""
    from scipy.optimize import linear_sum_assignment

    if not len(adapted) or not len(base):
        return []
    a = [_as_bytes(encode_mask(m)) for m in adapted.masks]
    b = [_as_bytes(encode_mask(m)) for m in base.masks]
    ious = np.asarray(mask_utils.iou(a, b, [0] * len(b)))
    rows, cols = linear_sum_assignment(-ious)
    return ious[rows, cols].tolist()


def _summarise(pairs: list[tuple[Detections, Detections]], ious: list[float]) -> dict:
    adapted = [len(a) for a, _ in pairs]
    base = [len(b) for _, b in pairs]
    return {
        "matched_mask_iou": float(np.mean(ious)) if ious else None,
        "detections_base": float(np.mean(base)), "detections_adapted": float(np.mean(adapted)),
        "detection_change": float(np.mean(adapted) - np.mean(base)),
        "presence_shift": float(np.mean([a.presence - b.presence for a, b in pairs])),
    }


@torch.no_grad()
def forgetting_check(runner: SplitRunner) -> dict:
    """How far the adapted model's answers to out-of-domain prompts moved from the base's.

    No labels: the base model's own confident detections are the reference. Reports the mean
    mask IoU of matched detections, the change in detections per (image, prompt), and the
    shift of the presence probability, overall and per prompt.
    """
    from sam3_lora.data.images import open_image
    from sam3_lora.model import forward_queries

    cfg = runner.config.evaluation
    prompts = cfg.retain_prompts
    if not prompts or not hasattr(runner.model, "disable_adapter") or not cfg.retain_images:
        return {}
    text = {k: v.to(runner.device) for k, v in runner.processor.text(prompts).items()}
    index = torch.zeros(len(prompts), dtype=torch.long, device=runner.device)
    pairs: dict[str, list] = {p: [] for p in prompts}
    ious: dict[str, list] = {p: [] for p in prompts}
    for record in list(runner.records.values())[:cfg.retain_images]:
        pixels = runner.processor.images([open_image(record.path)]).to(runner.device)
        answers = []
        for base in (False, True):
            with runner.adapter_off(base):
                outputs = forward_queries(runner.model, pixels, index, **text)
            answers.append(postprocess(outputs, [(record.height, record.width)] * len(prompts),
                                       threshold=cfg.score_threshold))
        for prompt, adapted, base in zip(prompts, *answers, strict=True):
            pairs[prompt].append((adapted, base))
            ious[prompt] += _matched_iou(adapted, base)
    every_pair = [pair for p in prompts for pair in pairs[p]]
    return {"retain_prompts": list(prompts), "images": len(pairs[prompts[0]]),
            **_summarise(every_pair, [i for p in prompts for i in ious[p]]),
            "per_prompt": {p: _summarise(pairs[p], ious[p]) for p in prompts}}


def score(gt: dict, results: list[dict], config: Config) -> tuple[dict, dict]:
    """(flat metrics, PR curves) of COCO results against ``gt``: segm mAP and cgF1."""
    from sam3_lora.cgf1 import cgf1_from_inputs
    from sam3_lora.eval_inputs import prepare
    from sam3_lora.metrics import coco_from_inputs, combine

    inputs = prepare(gt, results, "segm")   # checked once, scored twice
    coco = coco_from_inputs(inputs)
    cgf1 = cgf1_from_inputs(inputs, score_threshold=config.evaluation.score_threshold)
    return combine(coco, cgf1), coco["curves"]


def load_model(config: Config, weights: str | Path | None, no_lora: bool):
    """(model, processor, weights folder or None): the base with the adapter attached unless
    ``no_lora``.

    ``weights`` (default: the run's ``best/``) is an adapter folder, or a whole model folder
    from ``training.method: full``, which then replaces the base (so there is no adapter).
    """
    from sam3_lora.adapter import load_adapter
    from sam3_lora.model import is_model_folder, load_sam3

    chosen = None if no_lora else Path(weights) if weights else Path(config.output.dir) / "best"
    if chosen is not None and not chosen.exists():
        raise EvaluationError(f"{chosen}: no adapter there; train first (sam3-lora train), give "
                              f"--weights DIR, or --no-lora to evaluate the base model")
    whole = chosen is not None and is_model_folder(chosen)
    loaded = load_sam3(str(chosen) if whole else config.model.source, revision=config.model.revision,
                       image_size=config.model.image_size, seed=config.training.seed)
    model = loaded.model if chosen is None or whole else load_adapter(loaded.model, chosen)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), loaded.processor, chosen


def load_split(config: Config, split_name: str):
    from sam3_lora.data.coco import check_split, load_coco_split

    folder = Path(config.data.root) / split_name
    if not folder.is_dir():
        raise EvaluationError(f"data.root={config.data.root}: no {split_name}/ split to evaluate; "
                              f"choose --split valid|test or point data.root at your dataset")
    return check_split(load_coco_split(folder, config.data.annotation_file, name=split_name),
                       config.data.skip_invalid)


def validate(config: Config, *, weights: str | Path | None = None, split: str | None = None,
             num_samples: int | None = None, no_lora: bool = False, compare_base: bool = False,
             positives_only: bool = False, output: str | Path | None = None, quiet: bool = False) -> dict:
    """Score the adapted (or base) model on a split; writes metrics, predictions and a report."""
    if config.data.prompt_mode == "generic":
        raise EvaluationError("data.prompt_mode=generic: validate prompts each category by its name; "
                              "class-agnostic evaluation is not supported yet, use category mode")
    split_name = split or config.evaluation.split
    model, processor, chosen = load_model(config, weights, no_lora)
    adapted = hasattr(model, "disable_adapter")   # a whole model from method=full has no base to compare
    data = load_split(config, split_name)
    runner = SplitRunner(model, processor, data, config, num_samples)
    defined = negative_units(data, runner.image_ids) > 0
    if not defined and not positives_only:
        raise EvaluationError(
            f"{data.annotation_path}: every (image, prompt) unit is positive, so cgF1 cannot be measured; "
            f"add images lacking some categories, or pass --positives-only (mAP only, cgF1 undefined)")
    found = runner.predict()
    metrics, curves = score(runner.ground_truth(), found.results, config)
    metrics.update(val_loss=found.val_loss, presence_AUC=presence_auc(found.units))
    base_metrics = base_found = None
    if compare_base and adapted:
        base_found = runner.predict(base=True, with_loss=False)
        base_metrics, _ = score(runner.ground_truth(), base_found.results, config)
        base_metrics["presence_AUC"] = presence_auc(base_found.units)
    forgetting = forgetting_check(runner) if adapted else {}
    out_dir = Path(output) if output else Path(config.output.dir) / f"eval-{split_name}"
    summary = {**metrics, "split": split_name, "weights": str(chosen or "base model"),
               "images": len(runner.image_ids), "units": len(found.units), "cgF1_defined": defined,
               **({"base": base_metrics} if base_metrics else {}), **({"forgetting": forgetting} if forgetting else {})}
    _write_outputs(out_dir, summary, found, base_found, runner, curves, config)
    if not quiet:
        from sam3_lora.metrics import format_table

        print(format_table(summary, base_metrics))
        print(f"validation loss {found.val_loss:.4f}" if found.val_loss is not None else "")
        print(f"wrote {out_dir}/metrics.json, predictions.json and report.md")
    return summary


def _write_outputs(out_dir: Path, summary: dict, found: SplitPredictions, base_found, runner: SplitRunner,
                   curves: dict, config: Config) -> None:
    from sam3_lora.report import write_report

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
                 title=f"sam3-lora validation: {runner.split.name} split, {summary['weights']}")


def report_examples(found: SplitPredictions, runner: SplitRunner) -> list[dict]:
    """The best, worst and random units, with their image, ground truth and predictions."""
    from sam3_lora.data.images import open_image
    from sam3_lora.data.masks import decode, to_rle
    from sam3_lora.report import select_examples

    cfg = runner.config.evaluation
    # Among positive units: a refused negative scores 1 but shows an empty picture.
    candidates = [u for u in found.units if u["positive"]] or found.units
    examples = []
    for unit in select_examples(candidates, k=cfg.report_examples):
        record = runner.records[unit["image_id"]]
        size = (record.height, record.width)
        gt = [decode(to_rle(o.segmentation, *size)) for o in record.objects
              if o.category_id == unit["category_id"] and o.segmentation and not o.iscrowd]
        mine = [r for r in found.results if r["image_id"] == unit["image_id"]
                and r["category_id"] == unit["category_id"] and r["score"] >= cfg.score_threshold]
        examples.append({
            "image": open_image(record.path), "prompt": unit["prompt"], "tag": unit["tag"],
            "unit_score": unit["unit_score"],
            "gt_masks": np.array(gt, dtype=bool).reshape(len(gt), *size),
            "pred_masks": np.array([decode(_as_bytes(r["segmentation"])) for r in mine], dtype=bool).reshape(len(mine), *size),
            "pred_scores": np.array([r["score"] for r in mine]),
            "pred_boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]).reshape(-1, 4),
        })
    return examples
