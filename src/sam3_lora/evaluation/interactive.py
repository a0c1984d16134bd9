"""The interactive segmentation protocol of RITM / SimpleClick / SAM: simulated clicks, NoC, mIoU@k.

A simulated user segments one object by clicking: each click goes to the error pixel farthest
from the boundary of the errors, positive where the object was missed, negative where
background was taken; the model predicts again from all clicks so far. "The largest error
region" of the papers is thus the one with the largest inscribed disc (the thickest), not
the one with the most pixels, and the click is that disc's centre. Scores per object: the IoU after each click; over a set of objects:

    mIoU_k   mean IoU after k clicks (k = 1, 3, 5)
    NoC_t    mean number of clicks to reach IoU >= t (t = 85%, 90%); an object that never
             does within ``max_clicks`` (20) counts ``max_clicks`` (RITM's convention)
    over_max_t  how many objects have NoC_t = ``max_clicks`` (RITM's ">=20" column)

The model is any callable ``predict(points, labels) -> mask`` (all clicks so far, (K, 2) x, y
pixel indices and (K,) 1 = positive / 0 = negative, to an (H, W) bool mask), so the protocol
knows nothing of the model; a model that refines its previous mask keeps it itself.

Reference: SamsungLabs/ritm_interactive_segmentation, ``isegm/inference/clicker.py``
(``Clicker._get_next_click``), ``evaluation.py`` (``evaluate_sample``) and ``utils.py``
(``get_iou``, ``compute_noc_metric``); SAM 2's ``sample_one_point_from_error_center`` is the
same click. Deliberate difference: RITM's distance transform is OpenCV's (float32), this one
scipy's exact Euclidean transform (float64): the same distances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sam3_lora.data.masks import boundary_distances
from sam3_lora.errors import Sam3LoraError

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""predict(points (K, 2) float x, y; labels (K,) int 1/0) -> (H, W) bool mask."""

MAX_CLICKS = 20
NOC_THRESHOLDS = (0.85, 0.90)
MIOU_CLICKS = (1, 3, 5)


@dataclass(frozen=True)
class Click:
    """One simulated click at pixel (row ``y``, column ``x``)."""

    y: int
    x: int
    positive: bool


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray | None = None,
               ignore: np.ndarray | None = None) -> Click:
    """The next click on (H, W) bool ``gt`` given the (H, W) bool prediction ``pred``.

    The click goes to the error pixel with the largest distance to the errors' boundary,
    among pixels not yet clicked (``clicked``) and not ignored (``ignore``); positive if that
    pixel is a missed one (false negative), negative if it is a false positive. Ties go to
    the first pixel in row-major order, and to the negative side (RITM's ``>``). With no
    error left, this is a negative click on the first unclicked pixel, as in RITM.
    """
    valid = np.ones(gt.shape, dtype=bool) if ignore is None else ~ignore
    missed = gt & ~pred & valid
    extra = ~gt & pred & valid
    unclicked = np.ones(gt.shape, dtype=bool) if clicked is None else ~clicked
    missed_depth = boundary_distances(missed) * unclicked
    extra_depth = boundary_distances(extra) * unclicked
    positive = bool(missed_depth.max() > extra_depth.max())
    depth = missed_depth if positive else extra_depth
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(int(y), int(x), positive)


def mask_iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of (H, W) bool masks outside ``ignore`` (RITM's ``get_iou``); ``gt`` is never
    empty here (``click_ious`` refuses empty objects)."""
    valid = np.ones(gt.shape, dtype=bool) if ignore is None else ~ignore
    return float(np.sum(gt & pred & valid) / np.sum((gt | pred) & valid))


def click_ious(gt: np.ndarray, predict: Predictor, *, max_clicks: int = MAX_CLICKS,
               ignore: np.ndarray | None = None, stop_iou: float | None = max(NOC_THRESHOLDS),
               min_clicks: int = max(MIOU_CLICKS)) -> np.ndarray:
    """Simulate clicks on one object: (H, W) bool ``gt`` -> (n,) IoU after each click.

    Runs up to ``max_clicks``, stopping early once the IoU reaches ``stop_iou`` after at
    least ``min_clicks`` clicks (RITM's ``max_iou_thr`` / ``min_clicks``): the defaults stop
    as soon as every metric here is known, so they change no score. ``stop_iou=None`` always
    runs ``max_clicks``.
    """
    gt = np.asarray(gt, dtype=bool)
    valid_gt = gt if ignore is None else gt & ~ignore
    if not valid_gt.any():
        raise Sam3LoraError("interactive evaluation: an object's ground-truth mask is empty; "
                            "drop empty objects from the evaluation set")
    pred = np.zeros_like(gt)
    clicked = np.zeros_like(gt)
    points, labels, ious = [], [], []
    for count in range(1, max_clicks + 1):
        click = next_click(gt, pred, clicked, ignore)
        clicked[click.y, click.x] = True
        points.append((click.x, click.y))
        labels.append(int(click.positive))
        pred = _checked_mask(predict(np.array(points, dtype=np.float32),
                                     np.array(labels, dtype=np.int64)), gt.shape)
        ious.append(mask_iou(gt, pred, ignore))
        if stop_iou is not None and ious[-1] >= stop_iou and count >= min_clicks:
            break
    return np.array(ious)


def _checked_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise Sam3LoraError(f"interactive evaluation: the predictor returned a mask of shape "
                            f"{mask.shape} for an object of shape {shape}; return one (H, W) mask")
    return mask.astype(bool)


def number_of_clicks(ious: np.ndarray, threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Clicks needed to reach IoU >= ``threshold``: (n,) -> 1..n, or ``max_clicks`` if never."""
    # RITM compares float32 IoUs: the same counts while unions are under 800,000 pixels
    # (only an IoU within one float32 step below 0.85 / 0.90 could round onto it).
    reached = np.flatnonzero(np.asarray(ious) >= threshold)
    return int(reached[0]) + 1 if reached.size else max_clicks


def iou_after(ious: np.ndarray, clicks: int) -> float:
    """IoU after ``clicks`` clicks; a run that stopped early keeps its last IoU (which passed
    ``stop_iou``: further clicks are not simulated)."""
    return float(ious[min(clicks, len(ious)) - 1])


def summarize(per_object: Sequence[np.ndarray], max_clicks: int = MAX_CLICKS) -> dict[str, float]:
    """Metrics over objects, each given by its (n,) IoUs after each click."""
    if not per_object:
        raise Sam3LoraError("interactive evaluation: no objects to summarize")
    metrics = {f"mIoU_{k}": float(np.mean([iou_after(ious, k) for ious in per_object]))
               for k in MIOU_CLICKS}
    for threshold in NOC_THRESHOLDS:
        noc = np.array([number_of_clicks(ious, threshold, max_clicks) for ious in per_object])
        name = round(threshold * 100)
        metrics[f"NoC_{name}"] = float(noc.mean())
        metrics[f"over_max_{name}"] = int((noc == max_clicks).sum())
    return metrics


def mean_iou_by_clicks(per_object: Sequence[np.ndarray], max_clicks: int = MAX_CLICKS) -> list[float]:
    """Mean IoU after 1 .. ``max_clicks`` clicks over objects (the IoU-vs-clicks curve)."""
    return [float(np.mean([iou_after(ious, k) for ious in per_object])) for k in range(1, max_clicks + 1)]


def summarize_by_category(results: Iterable[tuple[str, np.ndarray]], max_clicks: int = MAX_CLICKS
                          ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(category, per-click IoUs) pairs -> (metrics over all objects, {category: metrics})."""
    grouped: dict[str, list[np.ndarray]] = {}
    for category, ious in results:
        grouped.setdefault(category, []).append(ious)
    everything = [ious for group in grouped.values() for ious in group]
    return (summarize(everything, max_clicks),
            {c: summarize(v, max_clicks) for c, v in sorted(grouped.items())})
