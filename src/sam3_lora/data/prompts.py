"""Prompts for training the tracker, sampled from ground-truth masks as SAM 2 trains.

SAM 2 prompts each object with one of (``training/model/sam2.py``, ``prepare_prompt_inputs``;
probabilities of ``sam2/configs/sam2.1_training``):

    the mask itself             with probability 1 - p_points                  (0.5)
    a noisy box                 with probability p_points * p_box              (0.25)
    one click inside the mask   with probability p_points * (1 - p_box)        (0.25)

and after a box or click prompt, each correction round adds one click drawn from the errors
of the previous prediction (``_iter_correct_pt_sampling``): a positive click in what it
missed, a negative click in what it wrongly took (with probability p_from_gt = 0.1 the round
ignores the prediction and clicks inside the mask again). SAM 2.1 runs 7 rounds
(``num_correction_pt_per_frame``); on a single image rather than a clip it sets p_points = 1
(never the mask). The clicks are uniform over their region, not at its centre
(``evaluation.interactive`` has the evaluation's centre clicks).

Deliberate option: ``center_click`` places the first click where the evaluation does (RITM's
interior point farthest from the boundary); ``data.center_click_probability`` sets how often a
click prompt uses it instead of a uniform one (0 by default, as SAM 2). A model trained on
uniform clicks alone meets that central click rarely, and its IoU head misjudges the three
masks it gives for it (BENCHMARKS.md, "The bundled tracker").

Everything is drawn from the ``torch.Generator`` passed in, in the same order and with the
same calls as SAM 2's ``sample_box_points`` and ``sample_random_points_from_errors``
(``sam2/modeling/sam2_utils.py``), so one seed gives SAM 2's boxes and clicks exactly. (SAM 2
draws the choices between prompt kinds from a separate NumPy generator; here they come from
the same torch generator, so that one seed fixes everything.) Shapes::

    masks, gt, pred   (B, H, W)  bool, one object each
    points            (B, K, 2)  float (x, y) pixel indices (column, row), SAM 2's convention
    labels            (B, K)     int32: 1 positive click, 0 negative click
    boxes             (B, 4)     float x_min, y_min, x_max, y_max in pixel indices, inclusive

Deliberate difference: SAM 2 returns a box as two points labelled 2 (top-left) and 3
(bottom-right); here it is an xyxy box, the form transformers' ``Sam3TrackerProcessor`` takes
(its prompt encoder makes the same two corner points). ``box_prompt`` refuses an empty mask
(SAM 2 would return an inverted box for it); give an absent object a click prompt instead.
"""

from __future__ import annotations

from enum import Enum

import torch

from sam3_lora.data.masks import boundary_distances, mask_to_box

PROB_POINTS = 0.5
"""SAM 2.1's ``prob_to_use_pt_input_for_train``: clicks or box rather than the mask."""
PROB_BOX = 0.5
"""SAM 2.1's ``prob_to_use_box_input_for_train``: a box rather than a click, given points."""
PROB_FROM_GT = 0.1
"""SAM 2.1's ``prob_to_sample_from_gt_for_train``: a correction click ignores the prediction."""
BOX_NOISE = 0.1
"""Box corner noise as a fraction of the box's width / height (SAM's default)."""
BOX_NOISE_BOUND = 20
"""Largest box corner noise in pixels (SAM's default)."""


class PromptKind(str, Enum):
    """How an object is prompted."""

    MASK = "mask"
    BOX = "box"
    CLICK = "click"


def _draw(generator: torch.Generator) -> float:
    """One uniform draw in [0, 1)."""
    return float(torch.rand((), generator=generator, device=generator.device))


def choose_prompt_kind(generator: torch.Generator, prob_points: float = PROB_POINTS,
                       prob_box: float = PROB_BOX) -> PromptKind:
    """Mask, box or click, with SAM 2's two-level choice (see the module docstring). SAM 2
    draws these from NumPy; here from ``generator``, so one seed fixes every prompt."""
    if _draw(generator) >= prob_points:
        return PromptKind.MASK
    return PromptKind.BOX if _draw(generator) < prob_box else PromptKind.CLICK


def box_prompt(masks: torch.Tensor, generator: torch.Generator, noise: float = BOX_NOISE,
               noise_bound: float = BOX_NOISE_BOUND) -> torch.Tensor:
    """Noisy boxes of (B, H, W) non-empty masks -> (B, 4) xyxy, pixel indices.

    Each coordinate of the tight box (first and last filled column / row) moves by a uniform
    amount in [-d, d], d = min(noise * box width, noise_bound) for x and the same with the
    height for y, then is clamped to the image (0 .. W-1, 0 .. H-1).
    """
    masks = masks.bool()
    empty = ~masks.flatten(1).any(1)
    if empty.any():  # SAM 2 would return an inverted box (W, H, -1, -1) plus noise
        raise ValueError(f"box_prompt: mask {int(empty.nonzero()[0])} is empty; prompt an absent "
                         "object with a click (click_prompt) instead")
    count, height, width = masks.shape
    boxes = mask_to_box(masks.cpu()).to(masks.device)
    boxes[:, 2:] -= 1  # exclusive -> inclusive (SAM 2's last filled pixel)
    if noise > 0:
        max_dx = torch.clamp((boxes[:, 2] - boxes[:, 0]) * noise, max=noise_bound)
        max_dy = torch.clamp((boxes[:, 3] - boxes[:, 1]) * noise, max=noise_bound)
        unit = torch.rand(count, 1, 4, generator=generator, device=generator.device)[:, 0]
        unit = 2 * unit.to(masks.device) - 1  # uniform in [-1, 1), one per coordinate
        boxes = boxes + unit * torch.stack((max_dx, max_dy, max_dx, max_dy), dim=-1)
        limits = torch.tensor([width, height, width, height], device=masks.device) - 1
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    return boxes


def click_prompt(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click uniform inside each (B, H, W) mask: ((B, 1, 2), (B, 1)).
    An empty mask (object absent) gets a negative click uniform over the image instead."""
    return error_clicks(masks, None, generator)


def center_click(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click per (B, H, W) mask at its interior point farthest from the boundary
    (the image border counting as boundary; ties to the first in row-major order), where the
    interactive evaluation puts its first click: ((B, 1, 2), (B, 1)). No draw is made. An
    empty mask has no interior: use ``click_prompt`` for it."""
    masks = masks.bool()
    if not masks.flatten(1).any(1).all():
        raise ValueError("center_click: a mask is empty; prompt an absent object with click_prompt")
    points = []
    for mask in masks.cpu().numpy():
        depth = boundary_distances(mask)
        row, column = divmod(int(depth.argmax()), depth.shape[1])
        points.append([column, row])
    points = torch.tensor(points, dtype=torch.float, device=masks.device)[:, None]
    return points, torch.ones(len(masks), 1, dtype=torch.int32, device=masks.device)


def first_click(masks: torch.Tensor, generator: torch.Generator,
                center_probability: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``click_prompt`` for (B, H, W) masks, or with ``center_probability`` for the whole batch
    ``center_click`` instead: ((B, 1, 2), (B, 1)). The uniform click is always drawn and the
    choice spends a draw only when the probability is above 0, so 0 keeps SAM 2's exact
    stream; a batch with an empty mask keeps its uniform clicks."""
    points, labels = click_prompt(masks, generator)
    if center_probability > 0 and _draw(generator) < center_probability and masks.flatten(1).any(1).all():
        return center_click(masks)
    return points, labels


def error_clicks(gt: torch.Tensor, pred: torch.Tensor | None, generator: torch.Generator,
                 num_points: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` clicks per object, each uniform over the errors of ``pred`` (B, H, W)
    against ``gt`` (B, H, W): ((B, K, 2), (B, K)).

    A click in a missed pixel (false negative) is positive, one in a wrongly taken pixel
    (false positive) negative. ``pred=None`` is an empty prediction, so the click is uniform
    inside ``gt``. A prediction without any error gets a negative click uniform over the
    background. As in SAM 2, each pixel of both error maps draws a uniform number and the
    click goes to the largest: uniform over the error pixels.
    """
    gt = gt.bool()
    pred = torch.zeros_like(gt) if pred is None else pred.bool()
    count, height, width = gt.shape
    false_positive = ~gt & pred
    false_negative = gt & ~pred
    all_correct = (gt == pred).flatten(1).all(1)[:, None, None]
    noise = torch.rand(count, num_points, height, width, 2, generator=generator,
                       device=generator.device).to(gt.device)
    noise[..., 0] *= (false_positive | (all_correct & ~gt))[:, None]  # channel 0: negative
    noise[..., 1] *= false_negative[:, None]  # channel 1: positive
    index = noise.flatten(2).argmax(dim=2)  # (B, K) over (y, x, channel)
    labels = (index % 2).to(torch.int32)
    pixel = index // 2
    points = torch.stack([pixel % width, pixel // width], dim=2).to(torch.float)
    return points, labels


def correction_clicks(gt: torch.Tensor, pred: torch.Tensor, generator: torch.Generator,
                      prob_from_gt: float = PROB_FROM_GT) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction round: a click per object from the errors of ``pred`` (B, H, W), or,
    with probability ``prob_from_gt`` for the whole batch, from ``gt`` alone (a fresh click
    inside the mask). ((B, 1, 2), (B, 1)). No draw is spent on the choice when the
    probability is 0, as in SAM 2."""
    from_gt = prob_from_gt > 0 and _draw(generator) < prob_from_gt
    return error_clicks(gt, None if from_gt else pred, generator)


def append_clicks(clicks, points: torch.Tensor, labels: torch.Tensor):
    """The clicks so far of N objects, (points (N, 1, K, 2), labels (N, 1, K)) or (None, None)
    before the first, with one more click each ((N, 1, 2), (N, 1)): the prompt encoder's
    points and labels for the next correction round."""
    new_points, new_labels = points[:, None], labels[:, None].long()
    if clicks[0] is None:
        return new_points, new_labels
    return torch.cat([clicks[0], new_points], dim=2), torch.cat([clicks[1], new_labels], dim=2)
