"""Identities through a video: CLEAR MOT's counts for concept tracking (masklets with ids).

Concept tracking (``Sam3VideoModel``: a phrase in, every instance out with an identity kept
from frame to frame) is scored per frame like detection (mAP, cgF1 on the frame's masks);
what a per-frame score cannot see is an identity that jumps from one object to another. This
counts it as CLEAR MOT does (Bernardin & Stiefelhagen, "Evaluating Multiple Object Tracking
Performance: The CLEAR MOT Metrics", 2008; the rules ``py-motmetrics`` implements), with mask
IoU as the similarity. Frame by frame:

1. a ground-truth object keeps the prediction it was matched to on the previous frame when
   their IoU is still at least ``iou_threshold`` (an identity is not given up for a slightly
   better overlap);
2. the objects and predictions left are matched one to one, maximising the summed IoU over
   pairs of at least ``iou_threshold`` (Hungarian);
3. a matched object whose prediction id differs from the one it was last matched to (on any
   earlier frame, not only the previous one) is an identity switch.

Unmatched objects are misses, unmatched predictions false positives; MOTA = 1 - (misses +
false positives + switches) / objects over all frames. Shapes, per frame::

    gt_ids   (n,)        int   object ids         gt_masks    (n, H, W)  bool
    pred_ids (m,)        int   prediction ids     pred_masks  (m, H, W)  bool
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

IOU_THRESHOLD = 0.5
"""The least mask IoU at which a prediction counts as finding an object (CLEAR MOT's usual 0.5)."""


@dataclass(frozen=True)
class Frame:
    """One frame's objects and predictions (shapes in the module docstring)."""

    gt_ids: np.ndarray
    gt_masks: np.ndarray
    pred_ids: np.ndarray
    pred_masks: np.ndarray


@dataclass(frozen=True)
class TrackingCounts:
    """CLEAR MOT's counts over a video (or several: ``+`` adds them)."""

    objects: int = 0           # ground-truth objects summed over frames
    matches: int = 0
    misses: int = 0
    false_positives: int = 0
    id_switches: int = 0

    @property
    def mota(self) -> float:
        """1 - (misses + false positives + identity switches) / objects (NaN with no object)."""
        if self.objects == 0:
            return float("nan")
        return 1.0 - (self.misses + self.false_positives + self.id_switches) / self.objects

    def __add__(self, other: TrackingCounts) -> TrackingCounts:
        return TrackingCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return self.objects, self.matches, self.misses, self.false_positives, self.id_switches


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, H, W), (m, H, W) bool -> (n, m) IoU; 0 where both masks are empty."""
    a = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float64)
    b = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def count_identities(frames: Iterable[Frame], iou_threshold: float = IOU_THRESHOLD) -> TrackingCounts:
    """CLEAR MOT's counts over the frames of one video, in order (see the module docstring)."""
    previous: dict[int, int] = {}   # object id -> prediction id matched on the previous frame
    last: dict[int, int] = {}       # object id -> prediction id it was last matched to, ever
    totals = TrackingCounts()
    for frame in frames:
        matched = _match(frame, previous, iou_threshold)
        switches = sum(1 for gt, pred in matched.items() if gt in last and last[gt] != pred)
        last.update(matched)
        previous = matched
        totals = totals + TrackingCounts(objects=len(frame.gt_ids), matches=len(matched),
                                         misses=len(frame.gt_ids) - len(matched),
                                         false_positives=len(frame.pred_ids) - len(matched), id_switches=switches)
    return totals


def _match(frame: Frame, previous: dict[int, int], iou_threshold: float) -> dict[int, int]:
    """Object id -> prediction id on one frame: the previous frame's pairs that still overlap
    enough, then a one-to-one assignment of the rest maximising summed IoU."""
    gt_ids, pred_ids = [int(i) for i in frame.gt_ids], [int(i) for i in frame.pred_ids]
    ious = mask_ious(np.asarray(frame.gt_masks, bool), np.asarray(frame.pred_masks, bool))
    matched: dict[int, int] = {}
    for row, gt in enumerate(gt_ids):
        pred = previous.get(gt)
        if pred in pred_ids and ious[row, pred_ids.index(pred)] >= iou_threshold:
            matched[gt] = pred
    rows = [r for r, gt in enumerate(gt_ids) if gt not in matched]
    taken = set(matched.values())
    cols = [c for c, pred in enumerate(pred_ids) if pred not in taken]
    if rows and cols:
        free = ious[np.ix_(rows, cols)]
        # A pair under the threshold may not match; its penalty outweighs every IoU, so the
        # assignment first matches as many valid pairs as it can (as py-motmetrics' costs do).
        score = np.where(free >= iou_threshold, free, -float(len(rows) + 1))
        for r, c in zip(*linear_sum_assignment(score, maximize=True)):
            if free[r, c] >= iou_threshold:
                matched[gt_ids[rows[r]]] = pred_ids[cols[c]]
    return matched
