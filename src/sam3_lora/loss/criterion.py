"""SAM3's training loss, DETR style: match, then one method per loss term.

One row = one (image, prompt) query; Q rows in a batch, N object queries per row, masks at
the model's resolution M (288 for 1008 px). Shapes::

    outputs["pred_logits"]      (Q, N)        query logits
    outputs["pred_boxes"]       (Q, N, 4)     xyxy in [0, 1] (transformers' convention)
    outputs["pred_masks"]       (Q, N, M, M)  mask logits (needed when mask or dice weigh)
    outputs["presence_logits"]  (Q, 1)        is the concept in the image at all?
    outputs["aux_outputs"]      list of dicts with the first three of the above but masks,
                                one per intermediate decoder layer (``forward_queries``)
    targets[i]["boxes"]         (n_i, 4)      cxcywh in [0, 1]; n_i = 0 for a negative prompt
    targets[i]["masks"]         (n_i, M, M)   bool
    targets[i]["has_mask"]      (n_i,)        bool; False = box-only object, no mask loss

Typical use (``model.forward.forward_queries`` returns the intermediate layers)::

    criterion = build_criterion(config.loss)
    outputs = forward_queries(model, image_index, pixel_values=..., input_ids=...,
                              attention_mask=..., aux_outputs=True)
    losses = criterion(outputs, targets)
    losses["loss"].backward()

The recipe is SAM3's (facebookresearch/sam3, ``sam3/train/loss``): IoU-aware classification,
presence, L1 + GIoU boxes, focal + dice masks, all but masks repeated on each intermediate
decoder layer, and an optional one-to-many term; the total is scaled by sqrt(rows)
(``LossConfig.scale_by_num_prompts``) and the classification normalised as for 200
queries (``LossConfig.pad_num_queries``), as in SAM3's training configs.

Where the mask loss differs from SAM3's: its resolution. SAM3 upsamples the predicted masks
(288 x 288 at 1008 px) to the padded input size (1008 x 1008) and scores them against
full-resolution targets. Here the targets are downsampled to the predictions' size M
(``data.collate.mask_size_for``: 4x the patch grid, 288 at 1008 px) when the batch is
built, and the loss is computed at M x M. Why: memory and time. Upsampled logits cost
(1008/288)^2 = 12x the pixels per matched mask, in the forward and again in the backward
(float32: 4 MB per mask instead of 0.33 MB, times every matched object of every prompt
in the batch), and full-size target masks would have to be decoded, stored and collated
at 1008 x 1008. The model never predicts finer than M, so the loss at M sees the same
prediction; what it loses is the targets' sub-pixel edge detail (each target pixel at M
is sampled nearest-neighbour, 0 or 1, where SAM3 scores the upsampled logits against every
image pixel), which matters little at 288 px and more at the tiny models' 32-64 px masks.
Targets of another size still work: predictions are then resized to them (bilinear), as
SAM3 does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sam3_lora.config import LossConfig
from sam3_lora.loss.matcher import HungarianMatcher, Indices, OneToManyMatcher
from sam3_lora.model.box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    paired_box_iou,
    paired_generalized_box_iou,
)
from sam3_lora.model.tensor_files import nonfinite

TERMS = ("loss_class", "loss_presence", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
"""The base names of the loss terms, each with its weight in ``weight_dict``."""
# Soft target of a matched query: p^a * IoU^(1-a) (SAM3's IABCEMdetr ``alpha``), at least
# MIN_SOFT_TARGET so that a matched query is never pushed to 0.
IOU_AWARE_ALPHA = 0.25
MIN_SOFT_TARGET = 0.01


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                       gamma: float) -> torch.Tensor:
    """Element-wise focal loss (RetinaNet): ``alpha_t (1 - p_t)^gamma BCE``; same shape.
    ``alpha < 0`` means no class weighting (RetinaNet's convention; SAM 2's object score uses
    it with ``gamma = 0``, which makes the loss plain BCE)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = (1 - p_t) ** gamma * bce
    if alpha < 0:
        return loss
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss ``1 - (2|P.T| + 1) / (|P| + |T| + 1)``: (K, P), (K, P) -> (K,)."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


class Sam3Criterion(nn.Module):
    """SAM3's loss for a batch of (image, prompt) rows; see the module docstring for shapes.

    ``forward`` returns the weighted terms and their sum under ``"loss"``. Term names are
    ``loss_class``, ``loss_presence``, ``loss_bbox``, ``loss_giou``, ``loss_mask``,
    ``loss_dice``; intermediate layer i adds ``<name>_aux_<i>`` (same weights) and the
    one-to-many term (last layer only) ``<name>_o2m`` (weight x ``one_to_many_weight``; no
    presence term, as in SAM3). A term whose weight is 0 is neither computed nor returned.

    Predictions holding NaN or infinity (a diverged model) cannot be matched: the result is
    then ``{"loss": NaN}`` alone, which a training loop skips like any non-finite loss.
    """

    def __init__(self, matcher: nn.Module, weight_dict: dict[str, float], *, aux_layers: bool = True,
                 one_to_many_matcher: nn.Module | None = None, one_to_many_weight: float = 2.0,
                 pos_weight: float = 10.0, class_gamma: float = 2.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, presence_alpha: float = 0.5, presence_gamma: float = 0.0,
                 scale_by_num_prompts: bool = True, pad_num_queries: int | None = 200):
        """``matcher``: the one-to-one assignment (``HungarianMatcher``). ``weight_dict``: the
        weight of each base term name (all six names; 0 skips a term). ``aux_layers``: also
        apply the losses to the intermediate decoder layers. ``one_to_many_matcher`` (None:
        no one-to-many term) and ``one_to_many_weight``: SAM3's one-to-many term. The rest are
        the classification, mask and presence focal parameters and SAM3's two normalisations
        (``LossConfig`` documents each); ``build_criterion(config.loss)`` reads them all from
        the config."""
        super().__init__()
        missing = set(TERMS) - set(weight_dict)
        if missing:
            raise ValueError(f"weight_dict lacks {sorted(missing)}; give a weight (0 to skip) for each of {TERMS}")
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.aux_layers = aux_layers
        self.one_to_many_matcher = one_to_many_matcher
        self.one_to_many_weight = one_to_many_weight
        self.pos_weight, self.class_gamma = pos_weight, class_gamma
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.presence_alpha, self.presence_gamma = presence_alpha, presence_gamma
        self.scale_by_num_prompts, self.pad_num_queries = scale_by_num_prompts, pad_num_queries

    # ---- one method per loss; each returns unweighted terms --------------------------

    def loss_classification(self, outputs, targets, indices, num_boxes):
        """IoU-aware BCE on "pred_logits" (Q, N), summed over all Q x N queries and divided
        by Q x max(N, ``pad_num_queries``) (SAM3's ``pad_n_queries``: the mean when N is at
        least the pad, as if the missing queries were padded with zero-loss ones otherwise).

        A matched query's target is ``t = max(p^0.25 * IoU^0.75, 0.01)`` (p its detached
        probability, IoU with its target box), weighted ``pos_weight``; an unmatched query's
        target is 0, weighted ``p^class_gamma``. Rows whose prompt has no target get no
        classification loss at all (SAM3 zeroes them; their refusal is the presence loss's
        job), but still count in the average, as in SAM3.
        """
        logits = outputs["pred_logits"].float()
        prob = logits.sigmoid()
        rows, preds = _matched(indices)
        with torch.no_grad():
            is_matched = torch.zeros_like(logits)
            is_matched[rows, preds] = 1.0
            iou, _ = paired_box_iou(outputs["pred_boxes"][rows, preds].float(),
                                    box_cxcywh_to_xyxy(_matched_targets(targets, indices, "boxes", logits)))
            soft_target = is_matched.clone()
            soft_target[rows, preds] = (prob[rows, preds] ** IOU_AWARE_ALPHA
                                        * iou ** (1 - IOU_AWARE_ALPHA)).clamp(min=MIN_SOFT_TARGET)
            has_target = _has_target(targets, logits)[:, None]  # (Q, 1)
        positives = F.binary_cross_entropy_with_logits(logits, soft_target, reduction="none")
        negatives = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
        loss = (positives * is_matched * self.pos_weight
                + negatives * (1 - is_matched) * prob**self.class_gamma)
        queries = max(logits.shape[1], self.pad_num_queries or 0)
        return {"loss_class": (loss * has_target).sum() / max(queries * logits.shape[0], 1)}

    def loss_presence(self, outputs, targets, indices, num_boxes):
        """Focal loss on "presence_logits" (Q, 1): target 1 iff the row has any target.
        Averaged over the Q rows. The only loss a negative prompt gives."""
        logits = outputs["presence_logits"].float().reshape(-1)
        loss = sigmoid_focal_loss(logits, _has_target(targets, logits),
                                  self.presence_alpha, self.presence_gamma)
        return {"loss_presence": loss.mean()}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        """L1 on cxcywh and 1 - GIoU, summed over the K matched pairs / ``num_boxes``."""
        rows, preds = _matched(indices)
        src = outputs["pred_boxes"][rows, preds].float()  # (K, 4) xyxy
        tgt = _matched_targets(targets, indices, "boxes", src)  # (K, 4) cxcywh
        loss_bbox = F.l1_loss(box_xyxy_to_cxcywh(src), tgt, reduction="none").sum()
        loss_giou = (1 - paired_generalized_box_iou(src, box_cxcywh_to_xyxy(tgt))).sum()
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": loss_giou / num_boxes}

    def loss_masks(self, outputs, targets, indices, num_boxes):
        """Focal (mean over pixels) and dice losses of the matched masks with ``has_mask``,
        summed / ``num_boxes`` (all target boxes, box-only ones included, as in SAM3).
        Predictions (K, M, M) are resized to the targets' size if it differs. Without any
        matched mask (only negative prompts, or only box-only objects) both terms are 0,
        as in SAM3, whatever the two sizes."""
        rows, preds = _matched(indices)
        src = outputs["pred_masks"][rows, preds].float()  # (K, M, M)
        keep = _matched_targets(targets, indices, "has_mask", src).bool()
        src = src[keep]
        tgt = _matched_targets(targets, indices, "masks", src)[keep].to(src.dtype)
        if not len(src):
            # Zero terms that stay in the graph (SAM3 reshapes the empty targets the same way).
            src = src.flatten(1)
            tgt = tgt.reshape(src.shape)
        elif src.shape[-2:] != tgt.shape[-2:]:
            src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0]
        src, tgt = src.flatten(1), tgt.flatten(1)
        focal = sigmoid_focal_loss(src, tgt, self.focal_alpha, self.focal_gamma).mean(1)
        return {"loss_mask": focal.sum() / num_boxes, "loss_dice": dice_loss(src, tgt).sum() / num_boxes}

    # ---- assembly ------------------------------------------------------------------

    def forward(self, outputs: Mapping[str, Any], targets: list[dict]) -> dict[str, torch.Tensor]:
        """outputs, targets: see the module docstring. Returns weighted terms and "loss"."""
        if self.aux_layers and "aux_outputs" not in outputs:
            raise ValueError("outputs has no 'aux_outputs': run the forward inside "
                             "forward_queries(..., aux_outputs=True), or set loss.aux_layers to false")
        # First, so that every process joins its all-reduce even when its outputs are not finite.
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        predictions = self._predictions(outputs)
        if nonfinite(predictions):
            # scipy's assignment refuses NaN costs; the step is lost anyway. Still part of the
            # graph, so that a caller's backward() fails only as a NaN loss would.
            return {"loss": sum(p.float().sum() for p in predictions.values()) * math.nan}
        losses = self._weighted(outputs, targets, self.matcher(outputs, targets), num_boxes,
                                masks=True, presence=True)
        if self.aux_layers:
            for i, aux in enumerate(outputs["aux_outputs"]):
                # Each layer is matched on its own, as in DETR and SAM3.
                terms = self._weighted(aux, targets, self.matcher(aux, targets), num_boxes,
                                       masks=False, presence=True)
                losses.update({f"{k}_aux_{i}": v for k, v in terms.items()})
        if self.one_to_many_matcher is not None:
            # SAM3 has no presence loss in its one-to-many outputs; masks are included.
            indices = self.one_to_many_matcher(outputs, targets)
            terms = self._weighted(outputs, targets, indices, num_boxes, masks=True, presence=False)
            losses.update({f"{k}_o2m": v * self.one_to_many_weight for k, v in terms.items()})
        total = sum(losses.values(), torch.zeros((), device=outputs["pred_logits"].device))
        if self.scale_by_num_prompts:
            # SAM3's scale_by_find_batch_size: the total (not the logged terms) x sqrt(rows).
            total = total * len(targets) ** 0.5
        losses["loss"] = total
        return losses

    def _predictions(self, outputs) -> dict[str, torch.Tensor]:
        """The prediction tensors the loss reads, every decoder layer's, by name."""
        keys = ["pred_logits", "pred_boxes", "presence_logits"]
        if self.weight_dict["loss_mask"] or self.weight_dict["loss_dice"]:
            keys.append("pred_masks")
        aux = outputs.get("aux_outputs") or [] if self.aux_layers else []
        layers = [("", outputs), *((f"aux_{i}.", layer) for i, layer in enumerate(aux))]
        return {prefix + key: layer[key] for prefix, layer in layers for key in keys if key in layer}

    def _weighted(self, outputs, targets, indices, num_boxes, masks: bool, presence: bool):
        """The weighted terms of one set of outputs; terms weighing 0 are skipped."""
        w = self.weight_dict
        methods = [(self.loss_classification, ("loss_class",)),
                   (self.loss_presence, ("loss_presence",) if presence else ()),
                   (self.loss_boxes, ("loss_bbox", "loss_giou")),
                   (self.loss_masks, ("loss_mask", "loss_dice") if masks else ())]
        weighted = {}
        for method, names in methods:
            if any(w[name] for name in names):
                terms = method(outputs, targets, indices, num_boxes)
                weighted.update({name: w[name] * terms[name] for name in names if w[name]})
        return weighted


def _matched(indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, prediction) index pairs of all matches, as DETR's ``_get_src_permutation_idx``."""
    rows = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(indices)])
    preds = torch.cat([pred for pred, _ in indices])
    return rows, preds


def _matched_targets(targets: list[dict], indices: Indices, key: str,
                     like: torch.Tensor) -> torch.Tensor:
    """``targets[i][key][tgt_idx]`` of every match, concatenated, on ``like``'s device."""
    values = [t[key].to(like.device)[tgt.to(like.device)] for t, (_, tgt) in zip(targets, indices)]
    out = torch.cat(values)
    return out.to(like.dtype) if out.is_floating_point() else out


def _has_target(targets: list[dict], like: torch.Tensor) -> torch.Tensor:
    """(Q,) float: 1 for rows with at least one target, 0 for negative prompts."""
    return torch.tensor([float(len(t["boxes"]) > 0) for t in targets], device=like.device,
                        dtype=like.dtype)


def _num_boxes(targets: list[dict], device: torch.device) -> float:
    """Target boxes in the batch, averaged over processes when distributed (as DETR and
    SAM3 do: DDP averages gradients, so each process normalises by the mean count)."""
    count = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return max(count.item(), 1.0)


def build_criterion(cfg: LossConfig) -> Sam3Criterion:
    """The criterion and its matchers as the config's ``loss`` section says (DETR's ``build``)."""
    matcher = HungarianMatcher(cfg.cost_class, cfg.cost_bbox, cfg.cost_giou, cfg.focal_alpha, cfg.focal_gamma,
                               cfg.cost_mask, cfg.cost_dice)
    weight_dict = {
        "loss_class": cfg.class_weight, "loss_presence": cfg.presence_weight,
        "loss_bbox": cfg.bbox_weight, "loss_giou": cfg.giou_weight,
        "loss_mask": cfg.mask_weight, "loss_dice": cfg.dice_weight,
    }
    return Sam3Criterion(
        matcher, weight_dict, aux_layers=cfg.aux_layers,
        one_to_many_matcher=OneToManyMatcher() if cfg.one_to_many else None,
        one_to_many_weight=cfg.one_to_many_weight, pos_weight=cfg.pos_weight, class_gamma=cfg.class_gamma,
        focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma,
        presence_alpha=cfg.presence_alpha, presence_gamma=cfg.presence_gamma,
        scale_by_num_prompts=cfg.scale_by_num_prompts, pad_num_queries=cfg.pad_num_queries,
    )
