"""Video object segmentation scores as DAVIS defines them: J (region), F (boundary), J&F.

Equal to the official DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py``, ``utils.py``, ``evaluation.py``) for the semi-supervised task,
without its OpenCV / scikit-image dependencies. Shapes::

    gt, pred   (T, H, W)     bool, one object's masks over T frames
    void       (T, H, W)     bool, optional pixels to ignore (DAVIS's semi-supervised task
                             passes none)
    sequence   (O, T, H, W)  the O objects of one sequence

Per frame, J is the IoU (1 when both masks are empty) and F the F-measure of boundary
precision and recall: a boundary pixel of one mask is matched when a boundary pixel of the
other lies within a disk of radius ``ceil(0.008 * image diagonal)``. Per object, each of J and
F gives a mean, a recall (fraction of frames above 0.5) and a decay (mean of the first
quarter of the frames minus that of the last quarter). Over a dataset, every measure is the
mean over all objects of all sequences, and J&F = (J mean + F mean) / 2.

Deliberate difference: DAVIS computes the decay's bin edges as uint8, which wraps for
sequences of 256 frames or more (its decay is then NaN or wrong); here they are plain
integers (equal up to 255 frames).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sam3_lora.errors import Sam3LoraError

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS's ``bound_th``)."""
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J per frame: IoU of ``pred`` with ``gt`` outside ``void``; 1 where both are empty.
    (T, H, W) -> (T,); also (H, W) -> () ."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask -> (H, W) bool map of its 1-pixel-wide boundary (DAVIS's ``_seg2bmap``).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour
    (so boundaries sit half a pixel toward the origin); the last row compares only east, the
    last column only south, and the bottom-right pixel is never a boundary.
    """
    seg = mask.astype(bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk: the offsets (x, y) with x^2 + y^2 <= r^2 (scikit-image's
    ``morphology.disk``, which DAVIS dilates with)."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return x**2 + y**2 <= radius**2


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Matching tolerance in pixels: ``bound_th`` itself when >= 1 (a whole number of
    pixels), else that fraction of the image diagonal, rounded up."""
    if bound_th >= 1 and bound_th != int(bound_th):
        raise ValueError(f"bound_th {bound_th}: give a fraction of the diagonal (< 1) or whole pixels")
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))


def frame_boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> float:
    """F of one frame: (H, W) masks -> the boundary F-measure in [0, 1].

    An empty boundary on one side only scores precision 1 / recall 0 (no prediction) or
    precision 0 / recall 1 (nothing to find); both empty score 1.
    """
    keep = np.ones(gt.shape, dtype=bool) if void is None else ~void.astype(bool)
    pred_boundary = boundary_map(pred.astype(bool) & keep)
    gt_boundary = boundary_map(gt.astype(bool) & keep)
    structure = disk(boundary_radius(*gt.shape, bound_th=bound_th))
    pred_near = ndimage.binary_dilation(pred_boundary, structure=structure)
    gt_near = ndimage.binary_dilation(gt_boundary, structure=structure)
    n_pred, n_gt = int(pred_boundary.sum()), int(gt_boundary.sum())
    if n_pred == 0 or n_gt == 0:
        precision, recall = float(n_pred == 0), float(n_gt == 0)
    else:
        precision = np.sum(pred_boundary & gt_near) / n_pred
        recall = np.sum(gt_boundary & pred_near) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> np.ndarray:
    """F per frame: (T, H, W) -> (T,)."""
    voids = [None] * len(gt) if void is None else void
    return np.array([frame_boundary_f(g, p, v, bound_th) for g, p, v in zip(gt, pred, voids)])


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F (T,), NaNs ignored.

    Recall: the fraction of frames scoring above 0.5. Decay: the mean over the first of four
    equal bins of frames minus the mean over the last (bins share their edge frames, as in
    DAVIS).
    """
    per_frame = np.asarray(per_frame, dtype=float)
    # DAVIS casts these edges to uint8 (wrong from 256 frames on); int is the deliberate fix.
    edges = (np.round(np.linspace(1, len(per_frame), DECAY_BINS + 1) + 1e-10) - 1).astype(int)
    first = per_frame[edges[0]:edges[1] + 1]
    last = per_frame[edges[DECAY_BINS - 1]:edges[DECAY_BINS] + 1]
    with warnings.catch_warnings():  # an all-NaN bin is NaN, as in DAVIS, not a warning
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(per_frame))
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, float(np.mean(per_frame > RECALL_THRESHOLD)), decay


@dataclass(frozen=True)
class ObjectScores:
    """The DAVIS statistics of one object of one sequence (``name`` = "<sequence>_<k>")."""

    name: str
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float


def evaluate_sequence(name: str, gt: np.ndarray, pred: np.ndarray, *,
                      drop_first_and_last: bool = True,
                      bound_th: float = BOUND_TH) -> list[ObjectScores]:
    """Scores of each object of one sequence: ``gt`` (O, T, H, W), ``pred`` (O', T, H, W)
    with O' <= O (missing objects count as never predicted, as in DAVIS).

    ``drop_first_and_last``: DAVIS's semi-supervised task scores frames 1 .. T-2 only (the
    first frame's mask is the prompt; the last is left out by the benchmark).
    """
    if pred.shape[0] > gt.shape[0] or pred.shape[1:] != gt.shape[1:]:
        raise Sam3LoraError(f"sequence {name}: predicted masks {tuple(pred.shape)} do not fit "
                            f"the ground truth {tuple(gt.shape)} (objects, frames, height, width)")
    if pred.shape[0] < gt.shape[0]:
        missing = np.zeros((gt.shape[0] - pred.shape[0], *pred.shape[1:]), dtype=bool)
        pred = np.concatenate([pred.astype(bool), missing])
    if drop_first_and_last:
        gt, pred = gt[:, 1:-1], pred[:, 1:-1]
    scores = []
    for k, (gt_object, pred_object) in enumerate(zip(gt, pred), start=1):
        j = statistics(region_similarity(gt_object, pred_object))
        f = statistics(boundary_measure(gt_object, pred_object, bound_th=bound_th))
        scores.append(ObjectScores(f"{name}_{k}", *j, *f))
    return scores


def summarize(objects: Sequence[ObjectScores]) -> dict[str, float]:
    """DAVIS's global table: each measure averaged over all objects, and J&F-Mean."""
    if not objects:
        raise Sam3LoraError("no video objects to summarize: the evaluation set is empty")

    def mean(field: str) -> float:
        return float(np.mean([getattr(o, field) for o in objects]))

    j_mean, f_mean = mean("j_mean"), mean("f_mean")
    return {"J&F-Mean": (j_mean + f_mean) / 2, "J-Mean": j_mean, "J-Recall": mean("j_recall"),
            "J-Decay": mean("j_decay"), "F-Mean": f_mean, "F-Recall": mean("f_recall"),
            "F-Decay": mean("f_decay")}


METRIC_NAMES = {"J&F-Mean": "J&F", "J-Mean": "J", "J-Recall": "J_recall", "J-Decay": "J_decay",
                "F-Mean": "F", "F-Recall": "F_recall", "F-Decay": "F_decay"}
"""DAVIS's column names (``summarize``) -> the keys of ``validate``'s metrics.json."""


def video_metrics(objects: Sequence[ObjectScores]) -> dict[str, float]:
    """``summarize`` under metrics.json's names: J&F, J, J_recall, J_decay, F, F_recall,
    F_decay, and ``objects``, how many were averaged."""
    return {**{METRIC_NAMES[name]: value for name, value in summarize(objects).items()}, "objects": len(objects)}


def summarize_by_group(results: Sequence[tuple[str | None, ObjectScores]]
                       ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(group, object's scores) pairs -> (``video_metrics`` over all objects, {group: its
    objects' ``video_metrics``}); objects of group None count in the first only (a sequence
    whose objects have no category)."""
    grouped: dict[str, list[ObjectScores]] = {}
    for group, scores in results:
        if group is not None:
            grouped.setdefault(group, []).append(scores)
    return (video_metrics([scores for _, scores in results]),
            {group: video_metrics(members) for group, members in sorted(grouped.items())})


def exclusive_masks(logits: np.ndarray) -> np.ndarray:
    """(O, H, W) mask logits of one frame's objects -> (O, H, W) bool masks with one object
    a pixel at most: the object of the highest logit, where that is above 0. DAVIS scores
    results as index masks (one id a pixel); this is SAM 2's
    ``_apply_non_overlapping_constraints`` before its threshold."""
    if not len(logits):
        return np.zeros(logits.shape, dtype=bool)
    best = np.argmax(logits, axis=0)
    return (np.arange(len(logits))[:, None, None] == best) & (logits > 0)
