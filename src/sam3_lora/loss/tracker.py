"""The tracker's loss (SAM 2's recipe): one object per prompt, several masks, several rounds.

SAM3's tracker is SAM 2's promptable segmenter: a prompt (clicks, a box or a mask) for one
object gives M candidate masks (M = 3 for an ambiguous single click, else 1), a predicted IoU
for each and one object-score logit (is the object visible at all?). Training repeats the
prediction over S steps: the first from the initial prompt, each later one after a correction
click sampled from the previous step's errors (``data.prompts``), and over T frames of a
video. Every step of every frame is supervised; the terms are summed.

Shapes (N objects of the batch, M masks, H x W the resolution the loss is computed at)::

    outputs[t][s]["pred_masks"]           (N, M, H, W)  mask logits, frame t, step s
    outputs[t][s]["iou_scores"]           (N, M)        predicted IoU of each mask
    outputs[t][s]["object_score_logits"]  (N, 1)        object present? (logit)
    targets[t]                            (N, H, W)     bool / {0, 1}; all 0 = object absent

The key names are those of transformers' ``Sam3TrackerModel`` outputs (without their leading
batch dimension). The recipe is facebookresearch/sam2 ``training/loss_fns.py``
(``MultiStepMultiMasksAndIous``) with the weights of ``sam2/configs/sam2.1_training``
(focal 20 : dice 1 : IoU 1 : class 1, ``supervise_all_iou``, L1 IoU loss, object scores)::

    loss_mask   focal loss, mean over pixels, of the best of the M masks
    loss_dice   dice loss of the same mask
    loss_iou    |predicted IoU - actual IoU| (L1, or squared) of every mask averaged
                (``supervise_all_iou``) or of the best one only
    loss_class  BCE of the object score against "the target has a pixel"

"Best" is the mask with the lowest ``w_mask * focal + w_dice * dice``: an ambiguous prompt may
mean any of the M masks, so only the closest one is pushed toward the target (SAM's
"minimum over masks"). The mask and IoU terms count only objects present in the frame; the
object score is supervised for all. Each term is summed over objects, steps and frames and
divided by N (``num_objects``), so the loss of a batch does not grow with its object count.

Deliberate difference from Meta's code: ``num_objects`` is this batch's N. Meta all-reduces
it across processes and divides by the world size (the mean N per GPU); in one process both
are N.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sam3_lora.loss.criterion import dice_loss, sigmoid_focal_loss

TRACKER_TERMS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")
"""The tracker's loss terms, each with a weight; ``"loss"`` is their weighted sum."""

Step = Mapping[str, torch.Tensor]
"""One prediction step of one frame: "pred_masks", "iou_scores", "object_score_logits"."""


def actual_iou(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask (logit > 0) with its target: (N, M, P), (N, M, P) ->
    (N, M). An empty union counts as IoU 0 (SAM 2 clamps the union to at least 1 pixel)."""
    pred, gt = mask_logits > 0, targets > 0
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


class TrackerCriterion(nn.Module):
    """SAM 2's multi-step, multi-mask loss of the tracker (see the module docstring).

    Defaults are those of SAM 2.1's training configs; ``pred_obj_scores=False`` drops the
    object-score term (and then every object counts as present, as in SAM 2).
    """

    def __init__(self, weight_mask: float = 20.0, weight_dice: float = 1.0,
                 weight_iou: float = 1.0, weight_class: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 supervise_all_iou: bool = True, iou_use_l1_loss: bool = True,
                 pred_obj_scores: bool = True, focal_alpha_obj_score: float = -1.0,
                 focal_gamma_obj_score: float = 0.0):
        super().__init__()
        self.weight_dict = {"loss_mask": weight_mask, "loss_dice": weight_dice,
                            "loss_iou": weight_iou, "loss_class": weight_class}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.focal_alpha_obj_score = focal_alpha_obj_score
        self.focal_gamma_obj_score = focal_gamma_obj_score
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.pred_obj_scores = pred_obj_scores

    def forward(self, outputs: Sequence[Sequence[Step]],
                targets: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``outputs``: T frames, each a list of S steps (S may differ by frame); ``targets``:
        (T, N, H, W) or T tensors (N, H, W). Returns the four terms and ``"loss"``, scalars."""
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} frames of outputs for {len(targets)} of targets")
        # The same N in every frame. Meta's mean N over processes (all-reduce / world size) is
        # this N in one process: the one deliberate difference (see the module docstring).
        num_objects = max(len(targets[0]), 1) if len(targets) else 1
        totals = dict.fromkeys(TRACKER_TERMS, 0.0)
        for frame_steps, frame_targets in zip(outputs, targets):
            for step in frame_steps:
                for name, per_object in self.step_losses(step, frame_targets).items():
                    totals[name] = totals[name] + per_object.sum()
        losses = {name: torch.as_tensor(total) / num_objects for name, total in totals.items()}
        losses["loss"] = sum(self.weight_dict[name] * losses[name]
                             for name in TRACKER_TERMS if self.weight_dict[name])
        return losses

    def step_losses(self, step: Step, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four terms of one step, per object (N,), not yet divided by ``num_objects``.
        ``targets`` (N, H, W)."""
        masks = step["pred_masks"]  # (N, M, H, W)
        logits, target = masks.flatten(2), targets.to(masks.dtype).flatten(1)[:, None]
        target = target.expand_as(logits)  # (N, M, P)
        focal = sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma).mean(-1)
        dice = dice_loss(logits, target)  # (N, M)
        iou_error = self.iou_error(step["iou_scores"], actual_iou(logits, target))  # (N, M)

        best = (self.weight_dict["loss_mask"] * focal
                + self.weight_dict["loss_dice"] * dice).argmin(dim=-1, keepdim=True)  # (N, 1)
        iou_term = iou_error.mean(-1) if self.supervise_all_iou else _take(iou_error, best)
        present, loss_class = self.object_terms(step["object_score_logits"], target[:, 0])
        # An absent object has no mask to learn: only its object score is trained (SAM 2).
        return {"loss_mask": _take(focal, best) * present, "loss_dice": _take(dice, best) * present,
                "loss_iou": iou_term * present, "loss_class": loss_class}

    def iou_error(self, predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
        """Element-wise |predicted - actual| (L1) or its square (MSE): (N, M)."""
        diff = predicted - actual
        return diff.abs() if self.iou_use_l1_loss else diff.square()

    def object_terms(self, object_logits: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(whether each object is present (N,) float, its object-score loss (N,)).
        ``object_logits`` (N, 1); ``target`` (N, P). Without object scores, all are present
        and the loss is 0."""
        if not self.pred_obj_scores:
            ones = torch.ones(target.shape[0], dtype=target.dtype, device=target.device)
            return ones, torch.zeros_like(ones)
        present = (target > 0).any(-1).to(object_logits.dtype)  # (N,)
        loss = sigmoid_focal_loss(object_logits[:, 0], present, self.focal_alpha_obj_score,
                                  self.focal_gamma_obj_score)
        return present, loss


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (N, M), index (N, 1) -> (N,): each row's entry at its index."""
    return values.gather(1, index)[:, 0]
