"""Box conversions and (generalised) IoU in pure torch (no torchvision).

Boxes are ``(..., 4)`` tensors, either ``cxcywh`` (centre, width, height) or ``xyxy``
(corners), normalised to [0, 1]. The pairwise functions accept any matching leading batch
dimensions: ``(..., N, 4)`` with ``(..., M, 4)`` gives ``(..., N, M)``. The ``paired_*``
functions compare boxes one to one: ``(K, 4)`` with ``(K, 4)`` gives ``(K,)``.
"""

from __future__ import annotations

import torch

# Guards the divisions against zero-area boxes (a prediction collapsed to a line in bf16, a
# one-pixel target): DETR's formulas give NaN there, which would break the assignment. It
# changes nothing for boxes of any real size.
EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``xyxy`` boxes: (..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union of ``xyxy`` boxes: (..., N, 4), (..., M, 4) -> 2 x (..., N, M)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # (..., N, M, 2)
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=EPS), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU (https://giou.stanford.edu) of ``xyxy`` boxes: -> (..., N, M) in [-1, 1]."""
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]  # area of the smallest box enclosing both
    return iou - (hull - union) / hull.clamp(min=EPS)


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of box i with box i: (K, 4), (K, 4) ``xyxy`` -> 2 x (K,).

    The diagonal of ``box_iou`` without building the K x K matrix (matched pairs in a loss).
    """
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=EPS), union


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of box i with box i: (K, 4), (K, 4) ``xyxy`` -> (K,)."""
    iou, union = paired_box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=EPS)
