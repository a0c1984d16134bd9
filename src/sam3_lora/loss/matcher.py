"""Assignments between SAM3's object queries and the target instances of each prompt.

One row = one (image, prompt) query with N predictions (SAM3's object queries) and n target
instances. ``HungarianMatcher`` gives the one-to-one assignment the losses use (SAM3's
``BinaryHungarianMatcherV2`` with ``focal=True``); ``OneToManyMatcher`` gives the optional
one-to-many assignment (SAM3's ``BinaryOneToManyMatcher``).

Conventions (those of transformers' ``Sam3Model`` outputs and of the data pipeline):
    outputs["pred_logits"]  (Q, N)     query logits
    outputs["pred_boxes"]   (Q, N, 4)  xyxy in [0, 1]            <- xyxy, as the model gives
    targets[i]["boxes"]     (n_i, 4)   cxcywh in [0, 1]          <- cxcywh, as the data gives
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from sam3_lora.model.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
)

Indices = list[tuple[torch.Tensor, torch.Tensor]]
"""Per query row: (pred_idx, tgt_idx), two int64 tensors of equal length (empty if none)."""

# Padding for rows with fewer targets than the longest row: a valid box keeps GIoU finite.
# Padded columns are cut off before the assignment, so its value never matters.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)


def padded_target_boxes(targets: list[dict], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Targets' cxcywh boxes padded to the longest row: ((Q, T, 4), [n_i for each row])."""
    sizes = [len(t["boxes"]) for t in targets]
    padded = torch.tensor(_PAD_BOX, device=device).repeat(len(targets), max(sizes, default=0), 1)
    for i, t in enumerate(targets):
        padded[i, : sizes[i]] = t["boxes"].to(device=device, dtype=padded.dtype)
    return padded, sizes


def _empty(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    none = torch.empty(0, dtype=torch.int64, device=device)
    return none, none.clone()


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, per query row, minimising

        cost = cost_bbox * L1(cxcywh) + cost_class * focal_cost(p) - cost_giou * GIoU
               [+ cost_mask * BCE(mask) + cost_dice * dice(mask)]

    where ``focal_cost(p) = -a (1-p)^g log p + (1-a) p^g log(1-p)`` (``a = focal_alpha``,
    ``g = focal_gamma``) is the focal loss of calling the prediction positive minus that of
    calling it negative. Rows without targets (negative prompts) get empty indices. With
    more targets than predictions only ``N`` targets are matched (as in DETR).

    The mask terms (Mask2Former's matching; SAM3 has none: both 0 by default) compare each
    predicted mask with each target mask, so they apply where the outputs carry
    "pred_masks" (the last decoder layer) and to targets with a mask.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, cost_mask: float = 0.0,
                 cost_dice: float = 0.0):
        super().__init__()
        if cost_class == cost_bbox == cost_giou == cost_mask == cost_dice == 0:
            raise ValueError("matcher costs cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.cost_mask, self.cost_dice = cost_mask, cost_dice
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict]) -> Indices:
        """outputs: "pred_logits" (Q, N), "pred_boxes" (Q, N, 4) xyxy; targets: Q dicts with
        "boxes" (n_i, 4) cxcywh. Returns Q pairs (pred_idx, tgt_idx) of min(N, n_i) entries."""
        device = outputs["pred_logits"].device
        cost, sizes = self.cost_matrix(outputs, targets)
        cost = cost.cpu()
        indices = []
        for row, n in zip(cost, sizes):
            if n == 0:
                indices.append(_empty(device))
                continue
            # Only the assignment itself runs row by row.
            pred_idx, tgt_idx = linear_sum_assignment(row[:, :n].numpy())
            indices.append((torch.as_tensor(pred_idx, dtype=torch.int64, device=device),
                            torch.as_tensor(tgt_idx, dtype=torch.int64, device=device)))
        return indices

    @torch.no_grad()
    def cost_matrix(self, outputs: dict[str, torch.Tensor],
                    targets: list[dict]) -> tuple[torch.Tensor, list[int]]:
        """Matching costs of all rows at once: ((Q, N, T), [n_i]); T = max n_i, and the
        columns of row i past n_i are padding."""
        logits, boxes_xyxy = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        tgt, sizes = padded_target_boxes(targets, logits.device)  # (Q, T, 4) cxcywh
        cost_bbox = torch.cdist(box_xyxy_to_cxcywh(boxes_xyxy), tgt, p=1)
        cost_giou = -generalized_box_iou(boxes_xyxy, box_cxcywh_to_xyxy(tgt))
        prob = logits.sigmoid()
        a, g = self.focal_alpha, self.focal_gamma
        # logsigmoid rather than log(sigmoid): finite for saturated logits.
        cost_class = (-a * (1 - prob) ** g * F.logsigmoid(logits)
                      + (1 - a) * prob**g * F.logsigmoid(-logits))  # (Q, N), same for every target
        cost = (self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
                + self.cost_class * cost_class[..., None])
        if (self.cost_mask or self.cost_dice) and "pred_masks" in outputs and max(sizes, default=0):
            bce, dice = mask_costs(outputs["pred_masks"], targets, cost.shape[-1])
            cost = cost + self.cost_mask * bce + self.cost_dice * dice
        return cost, sizes


def mask_costs(pred_masks: torch.Tensor, targets: list[dict], columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise mask costs, each (Q, N, T): the per-pixel binary cross-entropy (mean over
    pixels) and the dice loss between every predicted mask (``pred_masks`` (Q, N, M, M)
    logits) and every target mask (``targets[i]["masks"]`` (n_i, m, m)). Targets without a
    mask (box-only objects, padding columns) cost 0. Predictions are resized to m if M != m."""
    q, n = pred_masks.shape[:2]
    size = next((t["masks"].shape[-2:] for t in targets if len(t["masks"])), pred_masks.shape[-2:])
    logits = pred_masks.float()
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits.flatten(0, 1)[:, None], size=size, mode="bilinear",
                               align_corners=False)[:, 0].reshape(q, n, *size)
    logits = logits.flatten(2)  # (Q, N, P)
    target = logits.new_zeros(q, columns, logits.shape[-1])
    has_mask = torch.zeros(q, columns, dtype=torch.bool, device=logits.device)
    for i, t in enumerate(targets):
        count = len(t["masks"])
        target[i, :count] = t["masks"].to(logits).flatten(1)
        has_mask[i, :count] = t["has_mask"].bool()
    pixels = logits.shape[-1]
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), summed over pixels as two matmuls.
    bce = (torch.einsum("qnp,qtp->qnt", F.softplus(-logits), target)
           + torch.einsum("qnp,qtp->qnt", F.softplus(logits), 1 - target)) / pixels
    prob = logits.sigmoid()
    overlap = torch.einsum("qnp,qtp->qnt", prob, target)
    dice = 1 - (2 * overlap + 1) / (prob.sum(-1)[..., None] + target.sum(-1)[:, None, :] + 1)
    keep = has_mask[:, None, :]
    return bce * keep, dice * keep


class OneToManyMatcher(nn.Module):
    """Several predictions per target (SAM3's ``BinaryOneToManyMatcher``, from DAC-DETR).

    Quality ``C = alpha * p + (1 - alpha) * IoU``; a prediction is assigned to a target when
    it is among the target's ``topk`` best by ``C`` and ``C > threshold``. As in SAM3, one
    prediction may be assigned to two targets. SAM3 picks the top k with a quantile; we use
    ``topk`` directly, which differs only on ties.
    """

    def __init__(self, alpha: float = 0.3, threshold: float = 0.4, topk: int = 4):
        super().__init__()
        self.alpha, self.threshold, self.topk = alpha, threshold, topk

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict]) -> Indices:
        """Same inputs and output format as ``HungarianMatcher.forward``; any lengths."""
        prob, boxes_xyxy = outputs["pred_logits"].float().sigmoid(), outputs["pred_boxes"].float()
        device = prob.device
        tgt, sizes = padded_target_boxes(targets, device)
        if tgt.shape[1] == 0:
            return [_empty(device) for _ in targets]

        iou, _ = box_iou(boxes_xyxy, box_cxcywh_to_xyxy(tgt))  # (Q, N, T)
        quality = self.alpha * prob[..., None] + (1 - self.alpha) * iou
        k = min(self.topk, quality.shape[1])
        kth_best = quality.topk(k, dim=1).values[:, -1:, :]  # (Q, 1, T)
        matches = (quality >= kth_best) & (quality > self.threshold)
        indices = []
        for row, n in zip(matches, sizes):
            pred_idx, tgt_idx = row[:, :n].nonzero(as_tuple=True)
            indices.append((pred_idx, tgt_idx))
        return indices
