"""Prompts and images as both engines take them, checked the same way: numpy and PIL only.

``SAM3LoRAInference`` (PyTorch) and ``SAM3OnnxInference`` (onnxruntime, no torch) share these,
so a prompt is refused with the same one-line message whichever engine runs it. Nothing here
may import torch: the ONNX engine imports this module where torch is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from sam3_lora.data.images import open_image
from sam3_lora.errors import Sam3LoraError
from sam3_lora.serve.overlay import save_overlay

BOX_ONLY_PROMPT = "visual"
"""SAM3's text for a prompt made of boxes alone."""
BOX_ONLY_NAME = "boxes"
"""What a box-only prompt is called in predictions, overlays and COCO results."""


class PromptError(Sam3LoraError):
    """Prompts that cannot be run: none given, or boxes that do not fit the image."""


def as_image(image) -> Image.Image:
    """A path, a PIL image or an HxWx3 uint8 array -> an RGB PIL image."""
    if isinstance(image, (str, Path)):
        return open_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise PromptError(f"image array of shape {array.shape}: expected H x W x 3 (RGB)")
    return Image.fromarray(array[..., :3].astype(np.uint8))


def check_boxes(boxes, size: tuple[int, int], what: str = "boxes") -> np.ndarray:
    """(n, 4) x1 y1 x2 y2 pixel boxes inside an image of ``size`` (W, H), or a clear error."""
    try:
        flat = np.asarray([] if boxes is None else boxes, dtype=float)
    except (TypeError, ValueError):   # ragged lists or non-numbers
        flat = np.zeros(1)
    if flat.size % 4:
        raise PromptError(f"{what}: each box needs 4 numbers [x1, y1, x2, y2] in pixels")
    array = flat.reshape(-1, 4)
    width, height = size
    for x1, y1, x2, y2 in array:
        if not (x2 > x1 and y2 > y1):
            raise PromptError(f"{what}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] needs x2 > x1 and y2 > y1")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise PromptError(f"{what}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is outside the "
                              f"{width}x{height} image; clip it to the image")
    return array


def check_points(points, labels, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(K, 2) finite clicks inside an image of ``size`` (W, H) and their (K,) 1 / 0 labels
    (all positive when None), or a clear error; (None, None) without points."""
    if points is None or len(points) == 0:
        if labels is not None and len(labels):
            raise PromptError("labels: given without points; give one label per point")
        return None, None
    try:
        array = np.asarray(points, dtype=float).reshape(-1, 2)
    except (TypeError, ValueError):
        raise PromptError("points: each point needs 2 numbers [x, y] in pixels") from None
    width, height = size
    if not np.isfinite(array).all() or (array < 0).any() or (array[:, 0] >= width).any() or (array[:, 1] >= height).any():
        raise PromptError(f"points: every point must lie inside the {width}x{height} image (0 <= x < {width}, "
                          f"0 <= y < {height})")
    marks = np.ones(len(array), dtype=int) if labels is None else np.asarray(labels).reshape(-1)
    if len(marks) != len(array) or not np.isin(marks, (0, 1)).all():
        raise PromptError(f"labels: give one label per point ({len(array)}), each 1 (object) or 0 (not it)")
    return array, marks.astype(int)


def check_object_prompt(points, labels, box, mask, size: tuple[int, int]
                        ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The tracker's prompt for one object on an image of ``size`` (W, H), checked as both
    engines check it: (points (K, 2), labels (K,), box (1, 4)), each None when not given;
    nothing at all is refused (``mask`` is checked against the image where it is used)."""
    points, labels = check_points(points, labels, size)
    box_array = check_boxes(box, size, what="box") if box is not None else None
    if box_array is not None and len(box_array) != 1:
        raise PromptError("box: give one box [x1, y1, x2, y2] for the one object")
    if points is None and box_array is None and mask is None:
        raise PromptError("segment: give points, a box or a mask of the object")
    return points, labels, box_array


def check_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask prompt of an image of ``size`` (W, H) as (H, W) float32 in [0, 1] units, or a
    clear error."""
    array = np.asarray(mask)
    if array.shape != (size[1], size[0]):
        raise PromptError(f"mask: shape {array.shape} for a {size[0]}x{size[1]} image; give an (H, W) = "
                          f"({size[1]}, {size[0]}) mask")
    return array.astype(np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (4,) float32 x1, y1, x2, y2 in pixels, x2 / y2 exclusive, all zeros when
    empty: ``data.masks.mask_to_box`` without torch (a test keeps them equal)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def as_prediction(answer: dict, name: str = "object") -> dict:
    """A tracker's ``segment`` answer in ``predict``'s form (one detection), for the overlay
    and the COCO results that ``predict`` writes."""
    mask = answer["mask"]
    return {"prompt": name, "num_detections": 1, "boxes": mask_box(mask)[None],
            "scores": np.array([answer["score"]]), "masks": mask[None], "presence": answer["object_score"]}


def parse_json_boxes(text: str | None, what: str):
    """Boxes written as JSON, ``'[[x1, y1, x2, y2], ...]'`` in pixels (``predict --bboxes``),
    as parsed lists (``check_boxes`` checks them against each image); None stays None.
    ``what`` names the input in the message."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise PromptError(f"{what} {text!r}: not JSON; write boxes as '[[x1, y1, x2, y2], ...]' in pixels") from None


def parse_points(values: list[str] | None, option: str | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``["X,Y", "X,Y,LABEL", ...]`` -> ((K, 2), (K,)), a missing label meaning 1 (the
    object); (None, None) for none. ``option`` names where they came from in messages."""
    if not values:
        return None, None
    points, labels = [], []
    for value in values:
        parts = value.split(",")
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or (len(numbers) == 3 and numbers[2] not in (0, 1)):
            raise PromptError(f"point {value[:40]!r} is not X,Y or X,Y,LABEL (pixels; LABEL 1 object, 0 not it)",
                              option=option)
        points.append(numbers[:2])
        labels.append(int(numbers[2]) if len(numbers) == 3 else 1)
    return np.array(points), np.array(labels)


def check_threshold(threshold: float, option: str | None = None) -> float:
    """A score threshold in [0, 1], or a clear error (NaN and 5 are not thresholds);
    ``option`` names the parameter it came from in the message."""
    value = float(threshold)
    if not 0.0 <= value <= 1.0:   # also false for NaN
        raise PromptError(f"threshold {threshold}: must be a number between 0 and 1", option=option)
    return value


def prompt_texts(prompts: str | list[str] | None, boxes) -> tuple[list[str], list[str]]:
    """(names, texts) of a call's prompts: one phrase or a list; with no text but boxes, the
    one box-only prompt (named "boxes", SAM3's text "visual"). Neither: a clear error."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not prompts and boxes is None:
        raise PromptError("no prompt: give text prompts, boxes, or both")
    return (prompts or [BOX_ONLY_NAME]), (prompts or [BOX_ONLY_PROMPT])


def boxes_cxcywh(positive: np.ndarray, negative: np.ndarray, size: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Checked pixel boxes of one image of ``size`` (W, H) -> SAM3's box prompt: (n, 4)
    float32 cx cy w h in [0, 1] and (n,) int64 labels (1 positive, 0 negative); positives
    first. No boxes: (0, 4) and (0,)."""
    width, height = size
    both = np.concatenate([positive, negative]).reshape(-1, 4) / np.array([width, height, width, height])
    cxcywh = np.stack([(both[:, 0] + both[:, 2]) / 2, (both[:, 1] + both[:, 3]) / 2,
                       both[:, 2] - both[:, 0], both[:, 3] - both[:, 1]], axis=1)
    labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
    return cxcywh.astype(np.float32), labels


class PredictRequest(NamedTuple):
    """One ``predict_batch`` call, checked: ``geometry`` holds (positive, negative) pixel boxes
    per picture, (n, 4) arrays."""

    pictures: list[Image.Image]
    threshold: float
    names: list[str]
    texts: list[str]
    geometry: list[tuple[np.ndarray, np.ndarray]]


class ImagePredictor:
    """The original tool's ``predict`` / ``visualize`` over a ``predict_batch``: what the
    PyTorch engine (``serve.inference``) and the ONNX one (``serve.onnx_engine``) share.
    Subclasses implement ``predict_batch`` (checking its inputs with ``_checked_request``),
    hold their default ``threshold`` and set ``_last_image`` to the last image seen."""

    _last_image: Image.Image | None = None
    threshold: float

    def predict_batch(self, images: list, prompts: str | list[str] | None = None, boxes=None,
                      negative_boxes=None, *, threshold: float | None = None,
                      max_detections: int | None = None) -> list[list[dict]]:
        raise NotImplementedError

    def _checked_request(self, images: list, prompts, boxes, negative_boxes,
                         threshold: float | None) -> PredictRequest:
        """A ``predict_batch`` call's inputs, checked the same way by both engines: images
        opened, the threshold (default: the engine's own), prompt names and texts, and each
        image's positive and negative boxes."""
        pictures = [as_image(image) for image in images]
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        names, texts = prompt_texts(prompts, boxes)
        geometry = [(check_boxes(boxes, p.size), check_boxes(negative_boxes, p.size, "negative boxes"))
                    for p in pictures]
        return PredictRequest(pictures, threshold, names, texts, geometry)

    def predict(self, image=None, text_prompts: str | list[str] | None = None, boxes=None, negative_boxes=None,
                image_path=None, *, threshold: float | None = None, max_detections: int | None = None) -> list[dict]:
        """One image (path, PIL image or array; ``image_path`` as the original tool named it)
        and its prompts -> one dict per prompt."""
        if image is None and image_path is None:
            raise PromptError("no image: pass image (a path, PIL image or array)")
        return self.predict_batch([image if image_path is None else image_path], text_prompts, boxes,
                                  negative_boxes, threshold=threshold, max_detections=max_detections)[0]

    def visualize(self, predictions: list[dict], output_path: str | Path, show_boxes: bool = True,
                  show_masks: bool = True, image=None) -> Path:
        """Overlay PNG of ``predictions`` on ``image`` (default: the last image predicted)."""
        picture = as_image(image) if image is not None else self._last_image
        if picture is None:
            raise PromptError("visualize: no image; predict first or pass image=")
        return save_overlay(picture, predictions, output_path, show_boxes=show_boxes, show_masks=show_masks)
