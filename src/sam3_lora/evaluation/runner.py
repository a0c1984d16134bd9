"""Running a model over a split: every category prompted on every image, as SAM3 validates.

Categories absent from an image are the negative prompts that cgF1 (and a model that must
refuse prompts) needs. Predictions go through the shared post-processing, become COCO
results, and are scored by ``score`` (COCO mAP and SAM3's cgF1 family); the validation loss
comes from the training criterion on the same forward pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.data.collate import build_dataloader
from sam3_lora.data.records import CocoSplit
from sam3_lora.data.results import coco_results
from sam3_lora.evaluation.cgf1 import cgf1_from_inputs
from sam3_lora.evaluation.inputs import prepare
from sam3_lora.evaluation.metrics import coco_from_inputs, combine
from sam3_lora.evaluation.results import (
    ground_truth,
    gt_iou_type,
    mask_ious,
    object_rle,
)
from sam3_lora.lora.weights import adapter_disabled
from sam3_lora.loss.criterion import build_criterion
from sam3_lora.model.forward import as_float32, forward_queries
from sam3_lora.model.postprocess import postprocess
from sam3_lora.model.processing import Sam3InputProcessor


@dataclass
class SplitPredictions:
    """What a model answered on a split."""

    results: list[dict] = field(default_factory=list)
    """COCO results: image_id, category_id, score, bbox [x, y, w, h], segmentation (RLE)."""
    units: list[dict] = field(default_factory=list)
    """One per (image, prompt): image_id, category_id, prompt, positive, unit_score, presence."""
    val_loss: float | None = None


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
    return float(mask_ious(confident, gt_rles).max(axis=0).mean())


class SplitRunner:
    """Runs one model over a split's (image, prompt) units; the same instance serves the
    adapted model and, with ``base=True``, its base (adapter switched off)."""

    def __init__(self, model: torch.nn.Module, processor: Sam3InputProcessor, split: CocoSplit, config: Config,
                 num_samples: int | None = None):
        self.model, self.processor, self.split, self.config = model, processor, split, config
        records = split.images[:num_samples] if num_samples else split.images
        self.image_ids = {r.id for r in records}
        self.subset = dataclasses.replace(split, images=list(records), problems=[])
        self.records = {r.id: r for r in records}
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def predict(self, base: bool = False, with_loss: bool = True) -> SplitPredictions:
        """Every unit of the split answered (by the base model with ``base``), with the mean
        validation loss of the batches when ``with_loss``."""
        cfg = self.config
        loader = build_dataloader(self.subset, cfg.data, self.processor.image_size, cfg.training.batch_size,
                                  train=False, seed=cfg.training.seed)
        criterion = build_criterion(cfg.loss) if with_loss else None
        found, losses = SplitPredictions(), []
        self.model.eval()
        with adapter_disabled(self.model, base):
            for batch in tqdm(loader, desc="base" if base else "validate", unit="batch", leave=False):
                text = self.processor.text(batch["prompts"])
                outputs = forward_queries(self.model, batch["query_image_index"].to(self.device),
                                          pixel_values=batch["pixel_values"].to(self.device),
                                          input_ids=text["input_ids"].to(self.device),
                                          attention_mask=text["attention_mask"].to(self.device),
                                          aux_outputs=criterion is not None)
                if criterion is not None:
                    targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
                               for t in batch["targets"]]
                    losses.append(criterion(as_float32(outputs), targets)["loss"].item())
                self._collect(batch, outputs, found)
        found.val_loss = float(np.mean(losses)) if losses else None
        return found

    def _collect(self, batch: dict, outputs: dict, found: SplitPredictions) -> None:
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
            # Box-only objects count by their box (as ground_truth scores them in segm).
            gt = [object_rle(o, record.height, record.width) for o in record.objects
                  if o.category_id == category_id and not o.iscrowd]
            found.units.append({
                "image_id": image_id, "category_id": category_id, "prompt": batch["prompts"][q],
                "positive": bool(batch["is_positive"][q]), "presence": found_q.presence,
                "unit_score": unit_score(entries, [g for g in gt if g], self.config.evaluation.score_threshold),
            })

    def ground_truth(self) -> dict:
        return ground_truth(self.split, self.image_ids)


def negative_units(split: CocoSplit, image_ids: set[int]) -> int:
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
    ranks = rankdata(scores)   # average ranks: ties count half
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(gt: dict, results: list[dict], score_threshold: float,
          iou_type: str | None = None) -> tuple[dict, dict]:
    """(flat metrics with ``iou_type``, PR curves) of COCO results against ``gt``: mAP and
    cgF1 (which counts detections scoring ``score_threshold`` or more), on masks (segm), or
    on boxes (bbox) when the GT has no mask (``gt_iou_type``; ``iou_type`` overrides it)."""
    iou_type = iou_type or gt_iou_type(gt)
    inputs = prepare(gt, results, iou_type)   # checked once, scored twice
    coco = coco_from_inputs(inputs)
    cgf1 = cgf1_from_inputs(inputs, score_threshold=score_threshold)
    return combine(coco, cgf1, iou_type=iou_type), coco["curves"]
