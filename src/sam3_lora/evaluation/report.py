"""An evaluation report to look at: ``report.md`` with PNG figures beside it.

``write_report(out_dir, metrics=...)`` writes the summary and per-category tables (base vs
fine-tuned when given), a forgetting table, and whichever figures it has data for: loss
curves from a run's ``metrics.jsonl``, COCO precision-recall curves, per-category AP bars and
a grid of best / worst / random examples. Every optional piece may be missing.

Figures are drawn on ``matplotlib.figure.Figure`` (Agg, no pyplot global state) and kept
small enough to open quickly: a PNG over ``MAX_PNG_BYTES`` (the examples grid:
``EXAMPLE_ROW_BYTES`` per row) is palette-quantised, then downscaled, until it fits.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
import warnings
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

MAX_PNG_BYTES = 150_000
DPI = 100
SUMMARY_KEYS = ("mAP", "mAP50", "mAP75", "cgF1", "cgF1_50", "cgF1_75", "pmF1", "IL_MCC")
CATEGORY_KEYS = ("AP", "AP50", "AP75", "cgF1")
CLICK_SUMMARY_KEYS = ("mIoU_1", "mIoU_3", "mIoU_5", "NoC_85", "NoC_90", "over_max_85", "over_max_90", "box_mIoU")
VIDEO_SUMMARY_KEYS = ("J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay")
"""The summary of a tracker's report (``model.task: interactive``, ``evaluation.interactive``)."""
EXAMPLES_NOTE = ("Ground truth left, predictions with scores right; colours are per instance, "
                 "not matched across panels.")
# Example rows are laid out in pixels (DPI of them = 1 inch): a gap, and the height of the
# row title plus the panel titles above the two image panels; each further title line adds one.
ROW_PAD, ROW_HEADER, LINE_HEIGHT = 10, 42, 14
MIN_PANEL = 200            # px: the panel titles fit even beside a narrow image
# examples.png's byte budget per row: a fixed total shrank a grid of 9 photos to 216 px wide, where
# small objects vanished; photos need ~0.5 byte per pixel even at 256 colours.
EXAMPLE_ROW_BYTES = 150_000
VIEW_MARGIN, VIEW_MIN = 0.25, 96   # the crop around the objects: margin (of their extent), least side (px)
MAX_ZOOM = 4.0             # a crop is enlarged at most this much (beyond, pixels are all one sees)
MIN_OUTLINE = 8            # px: the least side of a drawn box, so the smallest object stays visible
COCO_IOUS = tuple(np.linspace(0.5, 0.95, 10).round(2))
# Vivid, mutually distinct colours (tab10 without its grey/olive): instances stay apart.
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (23, 190, 207), (227, 119, 194), (140, 86, 75), (255, 221, 0), (0, 0, 128)])
NA_NOTE = ("Undefined for this evaluation. cgF1 = pmF1 × IL_MCC, and IL_MCC (image-level MCC) "
           "needs negative prompts, i.e. image-prompt pairs with no matching object; without "
           "them cgF1 and IL_MCC are undefined. \"—\" means the value was not reported.")
# Why a value is n/a depends on the value: one footnote per reason, each cell pointing at its own.
NA_NOTES = {
    "na": NA_NOTE,
    "na-size": ("COCO's size ranges: mAP_small, mAP_medium and mAP_large average AP over the "
                "ground-truth objects of area under 32² = 1,024 px, 32² to 96², and over "
                "96² = 9,216 px (areas in pixels of the original image). n/a: the ground truth "
                "has no (non-crowd) object in that range, so COCOeval has nothing to average "
                "(e.g. no object over 9,216 px: a 112 px image has 12,544 px in all)."),
    "na-ap": ("No ground-truth object (of this category) in the evaluated images: AP averages "
              "precision over recall, and recall needs at least one object to find."),
    "na-pos": ("No positive image-prompt pair (a prompt whose object is in the image): with "
               "nothing to find, the pm* values and the image-level recall are undefined."),
    "na-other": ("Undefined for this evaluation (e.g. presence_AUC needs both present and absent "
                 "prompts). \"—\" means the value was not reported."),
}
NA_NOTE_OF = {
    **dict.fromkeys(("cgF1", "cgF1_50", "cgF1_75", "IL_MCC", "IL_FPR"), "na"),
    **dict.fromkeys(("mAP_small", "mAP_medium", "mAP_large"), "na-size"),
    **dict.fromkeys(("mAP", "mAP50", "mAP75", "AP", "AP50", "AP75"), "na-ap"),
    **dict.fromkeys(("pmF1", "pmF1_50", "pmF1_75", "pmPrecision", "pmRecall", "IL_recall",
                     "IL_F1"), "na-pos"),
}
"""Metric -> the footnote saying why it can be n/a; "na-other" for any other metric."""


# ---- saving -----------------------------------------------------------------------------

def _save(fig: Figure, out_png: Path, max_bytes: int = MAX_PNG_BYTES) -> Path:
    """Write ``fig`` as a PNG of at most ``max_bytes``: quantise to 256 colours, then shrink."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    data = buffer.getvalue()
    image = Image.open(io.BytesIO(data)).convert("RGB") if len(data) > max_bytes else None
    # Photos compress badly as RGB PNG: 256 colours (undithered; dithering doubles the size)
    # cut them 3-4x; only if that is not enough is the whole figure shrunk.
    while image is not None and len(data) > max_bytes and min(image.size) >= 64:
        buffer = io.BytesIO()
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
        if len(buffer.getvalue()) < len(data):
            data = buffer.getvalue()
        scale = max(0.5, math.sqrt(max_bytes / len(data)) * 0.95)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.LANCZOS)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.write_bytes(data)
    return out_png


# ---- loss curves ------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (a killed run) is skipped, not fatal."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def _by_step(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``, sorted by step. A resumed run re-logs steps after its
    checkpoint, so the last record of a step wins."""
    last = {r["step"]: r[key] for r in records if isinstance(r.get(key), (int, float))}
    steps = np.array(sorted(last), dtype=float)
    return steps, np.array([last[s] for s in sorted(last)], dtype=float)


def plot_loss_curves(metrics_jsonl: Path, out_png: Path) -> Path | None:
    """Training loss (and a moving average), validation loss with the best marked, and the
    learning rate below, against step. None when the file is missing or has no losses."""
    if metrics_jsonl is None or not Path(metrics_jsonl).is_file():
        return None
    records = _read_jsonl(metrics_jsonl)
    train = [r for r in records if "loss" in r and "lr" in r]
    steps, loss = _by_step(train, "loss")
    val_steps, val = _by_step(records, "val_loss")
    if not len(steps) and not len(val_steps):
        return None
    fig = Figure(figsize=(7, 4.6))
    lr_steps, lr = _by_step(train, "lr")
    if len(lr_steps):   # the schedule explains bends in the loss, so it sits right below it
        ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax_lr.plot(lr_steps, lr, color="gray")
        ax_lr.set(ylabel="lr", xlabel="step")
        ax_lr.grid(alpha=0.3)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        ax = fig.subplots()
        ax.set_xlabel("step")
    if len(steps):
        ax.plot(steps, loss, color="C0", alpha=0.35 if len(steps) >= 30 else 1, lw=1,
                label="train loss")
        if len(steps) >= 30:   # raw per-log loss is noisy; the trend is what people read
            window = max(3, len(steps) // 20)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="C0", lw=2, label=f"train (mean of {window})")
    if len(val_steps):
        ax.plot(val_steps, val, "o-", color="C3", lw=1.5, ms=4, label="validation loss")
        best = int(np.argmin(val))
        ax.plot(val_steps[best], val[best], "*", color="C3", ms=14, mec="black",
                label=f"best {val[best]:.4f} @ {val_steps[best]:.0f}")
    values = np.concatenate([loss, val])
    if values.min() > 0 and values.max() / values.min() > 10:   # losses fall by decades
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Loss")
    fig.tight_layout()
    return _save(fig, out_png)


# ---- precision-recall and AP ------------------------------------------------------------

def plot_pr_curves(precision: np.ndarray, recall_thresholds: Sequence[float],
                   category_names: Sequence[str], out_png: Path,
                   iou_thresholds: Sequence[float] = COCO_IOUS) -> Path:
    """PR curves at IoU 0.50 and 0.75, one line per category plus their mean.

    ``precision``: COCOeval ``eval["precision"]``, shape (T IoUs, R recalls, K categories,
    A areas, M max-dets); area index 0 ("all") and the last max-dets are used; -1 = no data.
    """
    precision = np.asarray(precision, dtype=float)
    recall = np.asarray(recall_thresholds, dtype=float)
    num = precision.shape[2]
    names = [_short(n) for n in category_names][:num] + [
        f"category {k}" for k in range(len(category_names), num)]
    many = num > 10   # beyond ten, a legend is noise: grey lines + the mean
    fig = Figure(figsize=(11, 4.2))
    handles, aps = {}, {k: [] for k in range(-1, num)}   # -1: the mean over categories
    for ax, iou in zip(fig.subplots(1, 2, sharey=True), (0.5, 0.75), strict=True):
        t = int(np.argmin(np.abs(np.asarray(iou_thresholds) - iou)))
        curves = np.where(precision[t, :, :, 0, -1] < 0, np.nan, precision[t, :, :, 0, -1])
        valid = ~np.isnan(curves)   # mean over the categories with data at each recall
        mean = np.where(valid.any(1), np.nansum(curves, 1) / np.maximum(valid.sum(1), 1), np.nan)
        for k, curve in [*enumerate(curves.T), (-1, mean)]:
            aps[k].append(np.nanmean(curve) if not np.isnan(curve).all() else math.nan)
            handles[k] = ax.plot(recall, curve, **_pr_style(k, many, np.isnan(curve).all()))[0]
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", title=f"IoU {iou:.2f}")
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("precision")
    # One legend for both panels, beside them: long names never cover the curves.
    shown = [-1] if many else [*range(num), -1]
    labels = [("mean" if k < 0 else names[k]) + (
        " (no ground truth)" if np.isnan(aps[k]).all() else
        f"  AP50 {aps[k][0]:.2f} · AP75 {aps[k][1]:.2f}") for k in shown]
    if many:
        labels[0] += f"\n(grey: {num} categories)"
    right = 0.8 if many else 0.68
    fig.legend([handles[k] for k in shown], labels, loc="center left", fontsize=8,
               bbox_to_anchor=(right, 0.5), frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    return _save(fig, out_png)


def _pr_style(k: int, many: bool, empty: bool) -> dict:
    """Line style of category ``k`` (-1: the mean); an empty curve gets a blank legend entry."""
    if empty:
        return {"ls": "none"}
    if k < 0:
        return {"color": "k", "ls": "--", "lw": 2.2}
    return {"color": "0.6", "lw": 0.8} if many else {"color": PALETTE[k % len(PALETTE)] / 255,
                                                      "lw": 1.4}


def _short(name, limit: int = 28) -> str:
    return str(name) if len(str(name)) <= limit else str(name)[:limit - 3] + "..."


def _num(value) -> float:
    """``value`` as a float; NaN for None, text, or anything else that is not a number."""
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else math.nan


def plot_per_category_ap(per_category: dict[str, dict], out_png: Path,
                         compare: dict[str, dict] | None = None) -> Path:
    """Horizontal AP bars per category, best at the top; base beside fine-tuned if ``compare``."""
    names = sorted(per_category, key=lambda n: (np.nan_to_num(_num(per_category[n].get("AP")),
                                                              nan=-1.0), n))
    ap = np.array([_num(per_category[n].get("AP")) for n in names])
    y = np.arange(len(names))
    fig = Figure(figsize=(7, 1.3 + 0.32 * len(names) * (2 if compare else 1)))
    ax = fig.subplots()
    height = 0.4 if compare else 0.7
    bars = [(ap, "fine-tuned" if compare else "AP", "C0", y + (height / 2 if compare else 0))]
    if compare:
        base = np.array([_num((compare.get(n) or {}).get("AP")) for n in names])
        bars.append((base, "base", "0.65", y - height / 2))
    for values, label, color, pos in bars:
        ax.barh(pos, np.nan_to_num(values), height=height, color=color, label=label)
        for p, v in zip(pos, values, strict=True):
            ax.text(0 if np.isnan(v) else v, p, " n/a" if np.isnan(v) else f" {v:.2f}",
                    va="center", fontsize=7.5)
    top = np.nanmax(np.concatenate([ap, bars[-1][0]])) if not np.isnan(ap).all() else 1.0
    ax.set(yticks=y, yticklabels=[_short(n, 40) for n in names], xlim=(0, max(1.0, top * 1.1)),
           xlabel="AP (IoU .50:.95)", title="AP per category")
    ax.grid(axis="x", alpha=0.3)
    if compare:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_png)


CLICKS_NOTE = ("Each object segmented by a simulated user: every click at the centre of the largest "
               "error region (RITM's protocol); the mean IoU after each click, over all objects.")


def plot_iou_by_clicks(curves: dict[str, Sequence[float]], out_png: Path) -> Path:
    """Mean IoU after 1, 2, ... clicks, one line per model, with the 85% and 90% levels that
    NoC counts clicks to."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for (name, values), marker in zip(curves.items(), "os^v", strict=False):
        ax.plot(np.arange(1, len(values) + 1), values, marker=marker, markersize=3.5, label=name)
    for level in (0.85, 0.90):
        ax.axhline(level, color="0.6", linewidth=0.8, linestyle="--")
    longest = max(len(v) for v in curves.values())
    ax.set(xlabel="clicks", ylabel="mean IoU", ylim=(0, 1), xlim=(0.5, longest + 0.5),
           xticks=range(1, longest + 1, 2 if longest > 10 else 1), title="IoU by clicks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_png)


JF_NOTE = ("Each object prompted with its ground-truth mask on its first frame and tracked to the end "
           "(DAVIS's semi-supervised protocol); J&F = (J + F) / 2 over the sequence's objects, first and last "
           "frames left out.")


def plot_jf_by_sequence(scores: dict[str, dict[str, float]], out_png: Path) -> Path:
    """J&F of each sequence, one bar per model side by side ({model: {sequence: J&F}}),
    sequences in the first model's order."""
    names = list(next(iter(scores.values())))
    fig = Figure(figsize=(min(12.0, 2.5 + 0.45 * len(names) * len(scores)), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(scores)
    for k, (model, values) in enumerate(scores.items()):
        ax.bar(np.arange(len(names)) + (k - (len(scores) - 1) / 2) * width,
               [values.get(name, np.nan) for name in names], width, label=model)
    ax.set(ylabel="J&F", ylim=(0, 1), title="J&F per sequence")
    ax.set_xticks(np.arange(len(names)), [_short(name, 16) for name in names],
                  rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_png)


# ---- examples -----------------------------------------------------------------------------

def _resize_masks(masks, view: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """(n, H, W) bool -> (n, h, w) bool: the part inside ``view`` (x0, y0, x1, y1 as fractions
    of the mask's width and height), at PIL ``size`` = (w, h)."""
    masks = np.asarray(masks, dtype=bool).reshape(-1, *np.shape(masks)[-2:])
    mask_h, mask_w = masks.shape[1:]
    x0, y0, x1, y1 = view
    rows = slice(int(y0 * mask_h), max(int(y0 * mask_h) + 1, math.ceil(y1 * mask_h)))
    cols = slice(int(x0 * mask_w), max(int(x0 * mask_w) + 1, math.ceil(x1 * mask_w)))
    out = np.zeros((len(masks), size[1], size[0]), bool)
    for i, mask in enumerate(masks):   # bilinear + threshold: smoother edges than nearest
        image = Image.fromarray(mask[rows, cols].astype(np.uint8) * 255)
        out[i] = np.asarray(image.resize(size, Image.Resampling.BILINEAR)) > 127
    return out


def _overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8 with each (n, H, W) mask tinted in its colour and outlined opaque,
    so overlapping or thin instances stay visible."""
    out = image.astype(float)
    for i, mask in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        out[mask & ~inner] = color
    return out.astype(np.uint8)


def _mask_boxes(masks, image_size: tuple[int, int]) -> np.ndarray:
    """(n, 4) xyxy in image pixels of each (n, H, W) mask's pixels (NaN for an empty mask);
    ``image_size`` = (w, h) of the image the masks cover."""
    masks = np.asarray(masks, dtype=bool).reshape(-1, *np.shape(masks)[-2:])
    sx, sy = image_size[0] / masks.shape[2], image_size[1] / masks.shape[1]
    boxes = np.full((len(masks), 4), np.nan)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[i] = [xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy]
    return boxes


def _gt_objects(ex: dict, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth's (n, H, W) masks and (n, 4) xyxy pixel boxes, one per object: a
    box-only object has an empty mask (or there are no masks at all), a mask without a
    given box gets its mask's box."""
    masks = np.asarray(ex.get("gt_masks", np.zeros((0, 1, 1))), dtype=bool)
    masks = masks.reshape(-1, *masks.shape[-2:]) if masks.ndim >= 2 else np.zeros((0, 1, 1), bool)
    given = ex.get("gt_boxes")
    boxes = _mask_boxes(masks, image_size)
    if given is not None:
        given = np.asarray(given, dtype=float).reshape(-1, 4)
        boxes = np.concatenate([boxes, np.full((len(given) - len(boxes), 4), np.nan)]) \
            if len(given) > len(boxes) else boxes
        boxes[:len(given)] = given
    return masks, boxes


def _view(boxes: np.ndarray, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop (x0, y0, x1, y1 in image pixels) that shows every box with a margin: objects
    small in a large photo are shown large. The whole image when there is no box."""
    width, height = image_size
    boxes = boxes[~np.isnan(boxes).any(1)] if len(boxes) else boxes
    if not len(boxes):
        return 0, 0, width, height
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    margin = max(VIEW_MARGIN * max(x1 - x0, y1 - y0), VIEW_MIN / 4)
    half = max(x1 - x0 + 2 * margin, y1 - y0 + 2 * margin, VIEW_MIN) / 2   # square-ish: rows stay even
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, right = _span(cx, half, width)
    top, bottom = _span(cy, half, height)
    return left, top, right, bottom


def _span(center: float, half: float, limit: int) -> tuple[int, int]:
    """[center - half, center + half] moved (not cut) to lie inside [0, limit], as integers."""
    length = min(limit, max(1, round(2 * half)))
    start = int(min(max(0, round(center - half)), limit - length))
    return start, start + length


def _shown_view(pixels: Image.Image, view: tuple[int, int, int, int], max_side: int) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 of the ``view`` crop of ``pixels``, scaled so its longer side is
    ``max_side`` (enlarged at most MAX_ZOOM times), and that scale."""
    x0, y0, x1, y1 = view
    scale = min(MAX_ZOOM, max_side / max(x1 - x0, y1 - y0))
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    crop = pixels.convert("RGB").crop(view)
    return np.asarray(crop.resize(size, Image.Resampling.LANCZOS)), scale


def _as_image(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


def plot_examples(examples: list[dict], out_png: Path, max_side: int = 384,
                  max_instances: int = 20) -> Path:
    """One row per example: ground truth (left), predictions with scores (right).

    Each example: ``image`` (PIL or (H, W, 3) uint8), ``prompt``, ``tag``, ``unit_score``
    (optional), ``gt_masks`` (n, H, W) bool, ``gt_boxes`` (n, 4) xyxy pixels or None (one per
    object, masks in the same order; a box-only object's mask is empty), ``pred_masks``
    (m, H, W) bool, ``pred_scores`` (m,), ``pred_boxes`` (m, 4) xyxy pixels or None. Only the
    ``max_instances`` highest-scoring predictions are drawn.

    Readable on real photos: each row shows the crop around its ground-truth and shown
    predicted objects, at up to ``max_side`` px (small objects enlarged, at most MAX_ZOOM
    times), every ground-truth object outlined by its box, so none vanishes however small;
    and the byte budget grows with the rows (EXAMPLE_ROW_BYTES each), so a grid of photos
    is not shrunk until its objects are gone (a fixed budget shrank 9 photos to 216 px).
    """
    if not examples:
        raise ValueError("plot_examples needs at least one example")
    rows = [_example_row(ex, max_side, max_instances) for ex in examples]
    pad = ROW_PAD
    panel_w = max(MIN_PANEL, *(row["pixels"].shape[1] for row in rows))
    width = 2 * panel_w + 3 * pad
    for row in rows:
        row["title"] = _title(row["ex"], width - 2 * pad)
    heights = [row["pixels"].shape[0] + ROW_HEADER + LINE_HEIGHT * (len(row["title"]) - 1) + pad for row in rows]
    fig = Figure(figsize=(width / DPI, sum(heights) / DPI))
    top = sum(heights)
    for row, height in zip(rows, heights, strict=True):
        _draw_row(fig, row, top, (width, pad, panel_w))
        top -= height
    return _save(fig, out_png, max_bytes=EXAMPLE_ROW_BYTES * len(rows))


def _example_row(ex: dict, max_side: int, max_instances: int) -> dict:
    """What one row draws: the view's pixels and, in its pixels, the objects."""
    image = _as_image(ex["image"])
    gt_masks, gt_boxes = _gt_objects(ex, image.size)
    pred = np.asarray(ex.get("pred_masks", np.zeros((0, 1, 1))), dtype=bool)
    pred = pred.reshape(-1, *pred.shape[-2:]) if pred.ndim >= 2 else np.zeros((0, 1, 1), bool)
    scores = np.asarray(ex.get("pred_scores", []), dtype=float).reshape(-1)[:len(pred)]
    order = np.argsort(-scores, kind="stable")[:max_instances]   # a crowd of queries is unreadable
    boxes = ex.get("pred_boxes")
    boxes = None if boxes is None else np.asarray(boxes, dtype=float).reshape(-1, 4)
    boxes = boxes if boxes is not None and len(boxes) >= len(scores) else None   # unusable
    shown_boxes = boxes[order] if boxes is not None else _mask_boxes(pred[order], image.size)
    view = _view(np.concatenate([gt_boxes, shown_boxes]), image.size)
    pixels, scale = _shown_view(image, view, max_side)
    size = (pixels.shape[1], pixels.shape[0])
    fraction = (view[0] / image.width, view[1] / image.height, view[2] / image.width, view[3] / image.height)
    offset = np.array(view[:2] * 2, dtype=float)
    return {"ex": ex, "pixels": pixels, "scale": scale, "whole": view == (0, 0, *image.size),
            "gt_masks": _resize_masks(gt_masks, fraction, size), "gt_boxes": (gt_boxes - offset) * scale,
            "pred_masks": _resize_masks(pred[order], fraction, size), "pred_scores": scores[order],
            "pred_boxes": None if boxes is None else (boxes[order] - offset) * scale, "found": len(scores)}


def _title(ex: dict, width_px: float) -> list[str]:
    """The row's title lines: tag, score and the whole prompt, wrapped (never cut) to the row."""
    score = _num(ex.get("unit_score"))
    head = f"{ex.get('tag', '')} · score {'n/a' if math.isnan(score) else f'{score:.2f}'} · "
    per_line = max(20, int(width_px / 8))   # ~8 px per bold 10 pt character
    return textwrap.wrap(f'{head}"{ex.get("prompt", "")}"', per_line, break_on_hyphens=False) or [head]


def _draw_row(fig: Figure, row: dict, top: float, layout: tuple[int, int, int]) -> None:
    """One example row whose top edge is ``top`` pixels above the figure's bottom."""
    (width, pad, panel_w), fig_h = layout, fig.get_figheight() * DPI
    pixels = row["pixels"]
    h, w = pixels.shape[:2]
    fig.text(pad / width, (top - 4) / fig_h, "\n".join(row["title"]), fontsize=10, fontweight="bold",
             va="top", linespacing=1.15)
    header = ROW_HEADER + LINE_HEIGHT * (len(row["title"]) - 1)
    where = "" if row["whole"] else f" (zoomed {row['scale']:.1f}x)" if row["scale"] > 1 else " (cropped)"
    shown = len(row["pred_scores"])
    more = f" (top {shown} shown)" if row["found"] > shown else ""
    panels = [(row["gt_masks"], f"ground truth: {len(row['gt_boxes'])}{where}"),
              (row["pred_masks"], f"predictions: {row['found']}{more}")]
    axes = []
    for i, (masks, title) in enumerate(panels):
        left = pad + i * (panel_w + pad) + (panel_w - w) / 2
        ax = fig.add_axes((left / width, (top - header + 2 - h) / fig_h, w / width, h / fig_h))
        ax.imshow(_overlay(pixels, masks), interpolation="nearest")
        ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5))   # boxes at the edge do not widen the panel
        ax.set_title(title, fontsize=8.5, pad=3)
        ax.set_axis_off()
        axes.append(ax)
    gt_ax, ax = axes
    for j, box in enumerate(row["gt_boxes"]):   # every object, a box-only one or one too small to see
        _outline(gt_ax, box, PALETTE[j % len(PALETTE)] / 255)
    boxes, scores = row["pred_boxes"], row["pred_scores"]
    for j in range(len(scores) if boxes is not None else 0):
        _outline(ax, boxes[j], PALETTE[j % len(PALETTE)] / 255)
    for j, score in enumerate(scores):   # score tag above the box corner (else the mask's topmost
        # pixel), not over it: a small object stays visible under its tag
        y, x = np.unravel_index(np.argmax(row["pred_masks"][j]), row["pred_masks"][j].shape)
        x, y = boxes[j][:2] if boxes is not None else (x, y)
        ax.text(min(max(x, 0), w - 24), min(max(y, 12), h), f"{score:.2f}", fontsize=7, color="white",
                va="bottom", fontweight="bold", bbox={"facecolor": PALETTE[j % len(PALETTE)] / 255,
                                                   "edgecolor": "none", "pad": 1, "alpha": 0.9})


def _outline(ax, box: np.ndarray, color, **style) -> None:
    """The xyxy ``box`` (panel pixels) as a rectangle at least MIN_OUTLINE px a side, so a tiny
    object is still seen; nothing for a box of NaN (an object without one)."""
    if np.isnan(box).any():
        return
    (x0, y0, x1, y1), grow = box, np.maximum(0, MIN_OUTLINE - (box[2:] - box[:2])) / 2
    ax.add_patch(Rectangle((x0 - grow[0], y0 - grow[1]), x1 - x0 + 2 * grow[0], y1 - y0 + 2 * grow[1],
                           fill=False, lw=1.5, edgecolor=color, **style))


# ---- choosing examples --------------------------------------------------------------------

def select_examples(units: list[dict], k: int = 3, seed: int = 0) -> list[dict]:
    """The best ``k``, worst ``k`` and ``k`` random units by numeric ``unit_score``, as copies
    tagged "best" / "worst" / "random"; no unit twice, the same picks for the same seed.
    Units without a finite score can only be drawn at random."""
    scored = [i for i, u in enumerate(units) if math.isfinite(_num(u.get("unit_score")))]
    ranked = sorted(scored, key=lambda i: (-_num(units[i]["unit_score"]), i))
    best = ranked[:k]
    worst = [i for i in reversed(ranked) if i not in best][:k]
    rest = [i for i in range(len(units)) if i not in best and i not in worst]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rest), size=min(k, len(rest)), replace=False) if rest else []
    return [dict(units[i], tag=tag) for tag, indices in
            (("best", best), ("worst", worst), ("random", [rest[j] for j in picked]))
            for i in indices]


# ---- the report ---------------------------------------------------------------------------

def _fmt(value, footnote: str | None = "na-other") -> str:
    """A table cell: 3 decimals, integers as they are, None/NaN as "n/a" (with ``footnote``,
    the label of the note saying why, if given)."""
    if value is None or (isinstance(value, Real) and math.isnan(value)):
        return f"n/a[^{footnote}]" if footnote else "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    return str(value) if isinstance(value, Integral) else f"{value:.3f}"


def _cell(values: dict | None, key: str, footnote: bool = True) -> str:
    """``values[key]`` formatted; "—" when it is not there at all (not the same as None)."""
    if not isinstance(values, dict) or key not in values:
        return "—"
    return _fmt(values[key], NA_NOTE_OF.get(key, "na-other") if footnote else None)


def _diff(new, old) -> str:
    new, old = _num(new), _num(old)
    return "n/a" if math.isnan(new - old) else f"{new - old:+.3f}"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _summary(metrics: dict, base: dict | None, summary_keys: Sequence[str] = SUMMARY_KEYS) -> list[str]:
    # The standard metrics first, then any other scalar the evaluator added (kept, not lost).
    extra = [k for k, v in metrics.items() if k not in summary_keys and
             (v is None or isinstance(v, Real)) and not isinstance(v, bool)]
    keys = list(summary_keys) + extra
    if base is None:
        return _table(["Metric", "Value"], [[k, _cell(metrics, k)] for k in keys])
    return _table(["Metric", "Base", "Fine-tuned", "Δ"],
                  [[k, _cell(base, k), _cell(metrics, k), _diff(metrics.get(k), base.get(k))]
                   for k in keys])


def _per_category(per_category: dict, base: dict | None, compared: str = "AP",
                  first: Sequence[str] = CATEGORY_KEYS) -> list[str]:
    """One row per category, best ``compared`` first, with the base's beside it if given;
    the columns ``first`` in that order, then the others by name."""
    keys = [k for k in first if any(k in v for v in per_category.values())]
    keys += sorted({k for v in per_category.values() for k in v} - set(keys))
    names = sorted(per_category, key=lambda n: (-np.nan_to_num(_num(per_category[n].get(compared)),
                                                               nan=-1.0), n))
    header = ["Category", *keys] + ([f"base {compared}", f"Δ{compared}"] if base is not None else [])
    rows = []
    for name in names:
        row = [name] + [_cell(per_category[name], k) for k in keys]
        if base is not None:
            row += [_cell(base.get(name), compared),
                    _diff(per_category[name].get(compared), (base.get(name) or {}).get(compared))]
        rows.append(row)
    return _table(header, rows)


def _forgetting(forgetting: dict) -> list[str]:
    flat = {k: v for k, v in forgetting.items() if k != "per_prompt"}
    lines = _table(["Measure", "Value"], [[k, _fmt(v, None)] for k, v in flat.items()])
    per_prompt = forgetting.get("per_prompt") or {}
    if isinstance(per_prompt, dict) and per_prompt:
        keys = sorted({k for v in per_prompt.values() if isinstance(v, dict) for k in v})
        lines += ["Per retain prompt:", ""] + _table(
            ["Prompt", *keys], [[p, *(_cell(v, k, False) for k in keys)]
                                for p, v in per_prompt.items() if isinstance(v, dict)])
    return lines


def _figures(out_dir: Path, metrics: dict, base_metrics: dict | None, curves: dict | None,
             category_names: list[str] | None, run_metrics_jsonl: Path | None,
             examples: list[dict] | None, iou_by_clicks: dict[str, Sequence[float]] | None = None,
             jf_by_sequence: dict[str, dict[str, float]] | None = None,
             ) -> list[tuple[str, str, Callable[[], Path | None]]]:
    """(heading, note, draw) for each figure whose data was given; draw() writes the PNG."""
    per_category = metrics.get("per_category") or {}
    figures = []
    if run_metrics_jsonl is not None:
        figures.append(("Training", "", lambda: plot_loss_curves(run_metrics_jsonl,
                                                                 out_dir / "loss.png")))
    if curves and curves.get("precision") is not None:
        def draw_pr():
            precision = np.asarray(curves["precision"])
            recall = curves.get("recall_thresholds")
            recall = np.linspace(0, 1, precision.shape[1]) if recall is None else recall
            ious = curves.get("iou_thresholds")
            return plot_pr_curves(precision, recall, category_names or list(per_category),
                                  out_dir / "pr_curves.png", COCO_IOUS if ious is None else ious)
        figures.append(("Precision-recall", "Area all, most detections per image.", draw_pr))
    if iou_by_clicks:
        figures.append(("IoU by clicks", CLICKS_NOTE, lambda: plot_iou_by_clicks(
            iou_by_clicks, out_dir / "iou_by_clicks.png")))
    if jf_by_sequence:
        figures.append(("J&F per sequence", JF_NOTE, lambda: plot_jf_by_sequence(
            jf_by_sequence, out_dir / "jf_by_sequence.png")))
    if per_category and any("AP" in v for v in per_category.values()):
        base = (base_metrics or {}).get("per_category")
        figures.append(("AP per category", "", lambda: plot_per_category_ap(
            per_category, out_dir / "ap_per_category.png", base)))
    if examples:
        figures.append(("Examples", EXAMPLES_NOTE,
                        lambda: plot_examples(examples, out_dir / "examples.png")))
    return figures


def write_report(out_dir: Path, *, metrics: dict, base_metrics: dict | None = None,
                 curves: dict | None = None, category_names: list[str] | None = None,
                 run_metrics_jsonl: Path | None = None, examples: list[dict] | None = None,
                 forgetting: dict | None = None, title: str = "Evaluation report",
                 notes: list[str] | None = None, summary_keys: Sequence[str] = SUMMARY_KEYS,
                 iou_by_clicks: dict[str, Sequence[float]] | None = None,
                 jf_by_sequence: dict[str, dict[str, float]] | None = None) -> Path:
    """Write ``out_dir/report.md`` and its figures (PNG, beside it); returns the report path.

    ``metrics``: flat scalars (mAP, cgF1, ... None where undefined) and ``per_category``
    {name: {AP, AP50, AP75, cgF1}}. ``curves``: {"precision": COCOeval array (T, R, K, A, M),
    "recall_thresholds": [R], "iou_thresholds": [T]}. Figures appear only for given data.
    ``notes``: sentences shown above the summary table (what was scored, and why).
    ``summary_keys``: the metrics the summary shows first (``CLICK_SUMMARY_KEYS`` for a
    tracker, whose per-category tables then compare ``mIoU_1``). ``iou_by_clicks``: {model
    name: mean IoU after 1, 2, ... clicks}, drawn as one curve each. ``jf_by_sequence``:
    {model name: {sequence: J&F}} (``VIDEO_SUMMARY_KEYS``: a video tracker), drawn as bars.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_category = metrics.get("per_category") or {}
    base_per_category = (base_metrics or {}).get("per_category")
    lines = [f"# {title}", "", "## Summary", ""] + [f"{note}\n" for note in notes or []]
    lines += _summary(metrics, base_metrics, summary_keys)
    if per_category:
        compared, first = ("AP", CATEGORY_KEYS) if summary_keys == SUMMARY_KEYS else (summary_keys[0], summary_keys)
        lines += ["## Per category", ""] + _per_category(per_category, base_per_category, compared, first)
    if forgetting:
        lines += ["## Forgetting", "", "Fine-tuned vs base model on retain prompts "
                  + "(concepts not trained on).", ""] + _forgetting(forgetting)
    for heading, note, draw in _figures(out_dir, metrics, base_metrics, curves, category_names,
                                        run_metrics_jsonl, examples, iou_by_clicks, jf_by_sequence):
        try:   # a figure that fails must not cost the tables of a long evaluation
            path = draw()
        except Exception as error:   # noqa: BLE001 - reported in the report itself
            warnings.warn(f"report: {heading} figure not drawn: {error!r}", stacklevel=2)
            lines += [f"## {heading}", "", f"*(figure not drawn: {error!r})*", ""]
            continue
        if path is not None:
            lines += [f"## {heading}", ""] + ([note, ""] if note else []) + [
                f"![{heading}]({path.name})", ""]
    text = "\n".join(lines)
    lines += [f"[^{label}]: {note}\n" for label, note in NA_NOTES.items()
              if f"n/a[^{label}]" in text]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
