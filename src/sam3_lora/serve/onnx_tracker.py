"""SAM3's tracker from an ONNX export (``task: interactive``), on onnxruntime: numpy and PIL
only, no torch.

``SAM3OnnxTracker(folder)`` reads a folder written by ``sam3-lora export --onnx`` from an
interactive run (``export.onnx_tracker``) and answers like ``SAM3LoRAInference.segment``
(``serve.tracker.segment_object``): ``segment(image, points, labels, box=None, mask=None)``
-> ``{"mask": (H, W) bool, "score": predicted IoU, "object_score": probability the object is
there}``, with the same checks (``serve.prompts.check_object_prompt``).

For an app, the image is encoded once (``encode``, the large graph) and each click is one
``decode`` (the small graph); ``predictor(image)`` does both as ``model.tracker.
ObjectPredictor`` does, feeding each answer's mask logits back with the next click.

The choices transformers makes inside its forward are made here in numpy, on the decoder's
T masks (``choose_mask``): a lone click without box or mask takes the best predicted IoU of
masks 1..T-1 (SAM's multimask output); any other prompt takes mask 0, or the best of 1..T-1
when mask 0 is unstable (``dynamic_multimask_via_stability`` with the export's thresholds).
A mask prompt is resized as ``serve.tracker`` does (antialiased bilinear: PIL's float resize,
see ``serve.onnx_engine``); the answer's logits are resized with ``resize_masks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.onnx_format import TRACKER_GRAPH_FILES
from sam3_lora.serve.onnx_engine import (
    OnnxEngineError,
    checked_session,
    preprocess_image,
    read_export,
    resize_masks,
    run_graph,
    sigmoid,
)
from sam3_lora.serve.prompts import (
    ImagePredictor,
    PromptError,
    as_image,
    check_mask,
    check_object_prompt,
)

NOT_A_POINT = -1
"""The label of the padding token ending every prompt (``export.onnx_tracker``)."""
BOX_CORNER_LABELS = (2, 3)
"""The labels of a box's top-left and bottom-right corners, fed as points."""


@dataclass
class EncodedImage:
    """One image through the image encoder: what every click on it decodes against."""

    image_embeddings: np.ndarray      # (1, C, g, g)
    high_res_features_0: np.ndarray   # (1, C/8, 4g, 4g)
    high_res_features_1: np.ndarray   # (1, C/4, 2g, 2g)
    size: tuple[int, int]             # the image's (W, H)

    def feeds(self) -> dict[str, np.ndarray]:
        return {"image_embeddings": self.image_embeddings, "high_res_features_0": self.high_res_features_0,
                "high_res_features_1": self.high_res_features_1}


def prompt_tokens(points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None,
                  scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked clicks (K, 2) with labels (K,), and a box (4,), in pixels of the image ->
    point_coords (1, n, 2) float32 in pixels of the model's input and point_labels (1, n)
    int64, as transformers orders its tokens: the clicks (or one "not a point" when there
    are neither clicks nor a box), the box's two corners, then one "not a point"."""
    coords, marks = [], []
    if points is not None:
        coords.append(points * scale)
        marks.append(labels)
    elif box is None:
        coords.append(np.zeros((1, 2)))
        marks.append([NOT_A_POINT])
    if box is not None:
        coords.append(np.reshape(box, (2, 2)) * scale)
        marks.append(BOX_CORNER_LABELS)
    coords.append(np.zeros((1, 2)))
    marks.append([NOT_A_POINT])
    return (np.concatenate(coords).astype(np.float32)[None],
            np.concatenate([np.asarray(m, dtype=np.int64) for m in marks])[None])


def stability(logits: np.ndarray, delta: float) -> float:
    """A mask's stability: its area above +delta over its area above -delta (1 when the
    latter is empty), transformers' ``_get_stability_scores``."""
    inner, outer = np.float32((logits > delta).sum()), np.float32((logits > -delta).sum())
    return float(inner / outer) if outer > 0 else 1.0


def choose_mask(masks: np.ndarray, scores: np.ndarray, multimask: bool, tracker: dict) -> int:
    """Index of the answer among the decoder's masks (T, m, m) and scores (T,) (see the
    module docstring)."""
    best_multimask = 1 + int(np.argmax(scores[1:]))
    if multimask:
        return best_multimask
    if (tracker["dynamic_multimask_via_stability"]
            and stability(masks[0], tracker["stability_delta"]) < tracker["stability_thresh"]):
        return best_multimask
    return 0


def resize_mask_prompt(mask: np.ndarray, side: int) -> np.ndarray:
    """(H, W) float32 mask -> (1, 1, side, side) float32: antialiased bilinear, as
    ``serve.tracker``'s torch ``interpolate(antialias=True)``."""
    resized = Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32), mode="F").resize((side, side),
                                                                                              Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)[None, None]


class SAM3OnnxTracker(ImagePredictor):
    """SAM3's tracker from an ONNX export: ``segment``, ``encode`` / ``decode``,
    ``predictor`` and ``visualize``. ``threads`` and ``providers`` as ``SAM3OnnxInference``."""

    def __init__(self, onnx_dir: str | Path, *, threads: int | None = None, providers=("CPUExecutionProvider",)):
        self.folder = Path(onnx_dir)
        self.metadata = read_export(self.folder, "interactive")
        self.sessions = {name: checked_session(name, self.folder, self.metadata, threads, providers)
                         for name in TRACKER_GRAPH_FILES}
        image = self.metadata["image"]
        self.image_size = int(image["size"])
        self._mean, self._std = tuple(image["mean"]), tuple(image["std"])
        self.tracker = self.metadata["tracker"]
        self.mask_size = int(self.tracker["mask_size"])
        self.threshold = 0.5   # ImagePredictor's; the tracker answers one mask, without a threshold

    def encode(self, image) -> EncodedImage:
        """One image (path, PIL image or array) through the image encoder, once per image."""
        picture = as_image(image)
        self._last_image = picture
        pixels = preprocess_image(picture, self.image_size, self._mean, self._std)[None]
        outputs = run_graph(self.sessions["image_encoder"], "image_encoder", {"pixel_values": pixels})
        return EncodedImage(*outputs, size=picture.size)

    def decode(self, encoded: EncodedImage, point_coords: np.ndarray, point_labels: np.ndarray,
               mask_input: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One prompt as the mask decoder takes it (``prompt_tokens``; ``mask_input`` (1, 1,
        m, m) or None) -> masks (T, m, m) logits, iou_scores (T,), object_score_logits (1,)."""
        has_mask = np.ones(1, np.float32) if mask_input is not None else np.zeros(1, np.float32)
        if mask_input is None:
            mask_input = np.zeros((1, 1, self.mask_size, self.mask_size), np.float32)
        outputs = run_graph(self.sessions["mask_decoder"], "mask_decoder", {
            **encoded.feeds(), "point_coords": point_coords, "point_labels": point_labels,
            "mask_input": mask_input.astype(np.float32), "has_mask_input": has_mask})
        return dict(zip(("masks", "iou_scores", "object_score_logits"), (o[0] for o in outputs), strict=True))

    def answer(self, encoded: EncodedImage, points=None, labels=None, box=None, mask_input=None,
               multimask: bool = False) -> tuple[dict, np.ndarray]:
        """Checked pixel prompts on an encoded image -> (``segment``'s answer, the chosen mask
        logits (m, m), to feed back as the next click's ``mask_input``)."""
        side = self.image_size
        scale = np.array([side / encoded.size[0], side / encoded.size[1]])
        coords, marks = prompt_tokens(points, labels, None if box is None else box[0], scale)
        out = self.decode(encoded, coords, marks, mask_input)
        best = choose_mask(out["masks"], out["iou_scores"], multimask, self.tracker)
        width, height = encoded.size
        mask = resize_masks(out["masks"][best][None], height, width)[0]
        return ({"mask": mask, "score": float(out["iou_scores"][best]),
                 "object_score": float(sigmoid(out["object_score_logits"]).reshape(-1)[0])}, out["masks"][best])

    def segment(self, image, points=None, labels=None, box=None, mask=None) -> dict:
        """One object from clicks (``points`` (K, 2) x, y; ``labels`` 1 object / 0 not it), a
        ``box`` and / or a ``mask`` to refine, in pixels of ``image``: ``{"mask", "score",
        "object_score"}``, as ``SAM3LoRAInference.segment``."""
        picture = as_image(image)
        points, labels, box_array = check_object_prompt(points, labels, box, mask, picture.size)
        mask_input = None if mask is None else resize_mask_prompt(check_mask(mask, picture.size), self.mask_size)
        single_click = box_array is None and mask is None and points is not None and len(points) == 1
        return self.answer(self.encode(picture), points, labels, box_array, mask_input, single_click)[0]

    def predictor(self, image) -> OnnxObjectPredictor:
        """Clicks on one object of ``image``, encoded now, decoded per call."""
        return OnnxObjectPredictor(self, self.encode(image))

    def predict_batch(self, images: list, prompts=None, boxes=None, negative_boxes=None, *, threshold=None,
                      max_detections=None) -> list[list[dict]]:
        raise PromptError("a tracker export (model.task=interactive) segments one object from clicks, a box or "
                          "a mask: call segment(image, points, labels, box, mask); text prompts need a concept "
                          "export")


class OnnxObjectPredictor:
    """``model.tracker.ObjectPredictor`` on an ONNX export: every call takes every click so
    far (and / or a box) in pixels of the image, feeds the previous answer's mask logits
    back, and returns the (H, W) bool mask; a lone first click gets the multimask answer.
    ``reset()`` starts a new object on the same image."""

    def __init__(self, engine: SAM3OnnxTracker, encoded: EncodedImage):
        self.engine, self.encoded = engine, encoded
        self.reset()

    def reset(self) -> None:
        self.previous: np.ndarray | None = None   # (1, 1, m, m) logits of the last answer
        self.last: dict | None = None             # the last answer (mask, score, object_score)

    def __call__(self, points=None, labels=None, box=None) -> np.ndarray:
        points, labels, box_array = check_object_prompt(points, labels, box, self.previous, self.encoded.size)
        single_click = box_array is None and points is not None and len(points) == 1 and self.previous is None
        self.last, logits = self.engine.answer(self.encoded, points, labels, box_array, self.previous, single_click)
        self.previous = logits[None, None]
        return self.last["mask"]


__all__ = ["EncodedImage", "OnnxEngineError", "OnnxObjectPredictor", "SAM3OnnxTracker", "choose_mask",
           "prompt_tokens"]
