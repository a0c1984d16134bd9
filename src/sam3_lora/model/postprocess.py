"""SAM3's post-processing, shared by validation and prediction: one implementation.

For each (image, prompt) query the model proposes N objects. A proposal's score is
sigmoid(query logit) x sigmoid(presence logit): the presence head says whether the concept is
in the image at all, which is how SAM3 refuses prompts. Proposals under a threshold are
dropped, masks are resized to the original image and binarised at probability 0.5, boxes are
scaled to pixels. Mask NMS for overlapping duplicates is optional and off by default, as in
SAM3. Inputs were resized directly (not aspect-preserving) to the model's square size, so
[0, 1] coordinates map to the original image by its width and height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Detections:
    """What one query found in one image, best first (n detections, image H x W)."""

    scores: np.ndarray
    """(n,) float in [0, 1]: query probability x presence probability."""
    boxes: np.ndarray
    """(n, 4) float, x1 y1 x2 y2 in pixels of the original image."""
    masks: np.ndarray | None
    """(n, H, W) bool, or None when masks were not asked for."""
    presence: float
    """Presence probability of the prompt's concept in the image."""

    def __len__(self) -> int:
        return len(self.scores)


def query_scores(pred_logits: torch.Tensor, presence_logits: torch.Tensor) -> torch.Tensor:
    """(Q, N) query logits and (Q, 1) presence logits -> (Q, N) scores in [0, 1]."""
    return pred_logits.float().sigmoid() * presence_logits.float().sigmoid()


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of masks kept by greedy NMS on mask IoU; masks (n, H, W) bool sorted by score."""
    flat = masks.flatten(1).float()
    intersection = flat @ flat.T
    area = flat.sum(1)
    iou = intersection / (area[:, None] + area[None, :] - intersection).clamp(min=1.0)
    keep: list[int] = []
    for index in scores.argsort(descending=True).tolist():
        if all(iou[index, kept] <= iou_threshold for kept in keep):
            keep.append(index)
    return torch.tensor(keep, dtype=torch.long)


UPSAMPLE_FLOATS = 2**26
"""Mask logits are resized to the image this many float32 values (256 MB) at a time, so a
large image with many detections never holds all of them as floats at once."""


def postprocess_query(pred_logits: torch.Tensor, presence_logit: torch.Tensor, pred_boxes: torch.Tensor,
                      pred_masks: torch.Tensor | None, image_size: tuple[int, int], threshold: float = 0.5,
                      mask_nms_iou: float | None = None, max_detections: int | None = None) -> Detections:
    """One query's outputs -> its detections in the original image (the ``max_detections``
    best, when given).

    pred_logits (N,), presence_logit (1,), pred_boxes (N, 4) xyxy in [0, 1],
    pred_masks (N, m, m) logits or None; image_size (H, W) of the original image.
    """
    height, width = image_size
    scores = query_scores(pred_logits[None], presence_logit[None])[0]
    keep = (scores >= threshold).nonzero().flatten()
    keep = keep[scores[keep].argsort(descending=True)][:max_detections]
    masks = None
    if pred_masks is not None:
        masks = torch.zeros(0, height, width, dtype=torch.bool, device=pred_masks.device)
        if len(keep):   # interpolate refuses an empty batch of masks
            step = max(1, UPSAMPLE_FLOATS // (height * width))
            masks = torch.cat([F.interpolate(pred_masks[chunk].float()[None], size=(height, width),
                                             mode="bilinear", align_corners=False)[0] > 0
                               for chunk in keep.split(step)])
        if mask_nms_iou is not None and len(keep):
            survivors = mask_nms(masks, scores[keep], mask_nms_iou)
            keep, masks = keep[survivors], masks[survivors]
    scale = pred_boxes.new_tensor([width, height, width, height]).float()
    boxes = (pred_boxes[keep].float().clamp(0, 1) * scale)
    return Detections(
        scores=scores[keep].cpu().numpy(),
        boxes=boxes.cpu().numpy(),
        masks=None if masks is None else masks.cpu().numpy(),
        presence=float(presence_logit.float().sigmoid()),
    )


def postprocess(outputs, image_sizes: list[tuple[int, int]], threshold: float = 0.5,
                mask_nms_iou: float | None = None, with_masks: bool = True,
                max_detections: int | None = None) -> list[Detections]:
    """SAM3's outputs for Q queries -> Q ``Detections``; image_sizes[q] is query q's (H, W)."""
    return [
        postprocess_query(
            outputs["pred_logits"][q], outputs["presence_logits"][q], outputs["pred_boxes"][q],
            outputs["pred_masks"][q] if with_masks else None, image_sizes[q], threshold, mask_nms_iou,
            max_detections,
        )
        for q in range(len(image_sizes))
    ]
