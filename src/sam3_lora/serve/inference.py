"""Prediction with text and box prompts: ``SAM3LoRAInference`` (the original tool's API).

The vision encoder, most of SAM3's compute, runs once per image; K prompts then cost K rows
of the light prompt-dependent heads, in one batched call. Text features of a prompt are
computed once and cached across images (the cache is cleared when the adapter changes,
since LoRA may touch the text encoder). Scores and masks come from the shared
post-processing (``model.postprocess``), the same code validation uses.

The base's weights are in ``model.dtype`` (``auto``: bfloat16 on GPUs with bf16, float16 on
older ones, float32 on CPU; adapters stay float32) and run under autocast of that dtype.

Several adapters can share the one base in memory: ``load_adapter(folder, name)`` attaches
one, ``with engine.using(name):`` answers with it, ``with engine.base_model():`` with the
base. The text-feature cache is kept per adapter, so switching needs no care from callers.

Each prediction is one dict per prompt::

    prompt          str ("boxes" for box-only prompts)
    num_detections  int N
    boxes           (N, 4) float, x1 y1 x2 y2 in pixels of the image
    scores          (N,) float in [0, 1]
    masks           (N, H, W) bool at the image's size

Prompt and image checks (``PromptError``, ``check_boxes``, ``check_threshold``, ``as_image``)
live in the torch-free ``serve.prompts``, shared with the ONNX engine; import them from there
(only ``PromptError`` is re-exported here, for the original tool's imports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam3_lora.config import DEFAULT_SCORE_THRESHOLD, Config, load_config
from sam3_lora.lora.adapter import load_adapter
from sam3_lora.lora.weights import adapter_disabled, has_adapter, load_finetuned
from sam3_lora.model.forward import encode_images, encode_text, forward_queries
from sam3_lora.model.postprocess import postprocess
from sam3_lora.serve.prompts import (
    ImagePredictor,
    PromptError,
    as_image,
    boxes_cxcywh,
    check_threshold,
)
from sam3_lora.serve.tracker import segment_object


class SAM3LoRAInference(ImagePredictor):
    """SAM3 with an adapter (or the base model) ready for prompts.

    ``config_path`` (or ``config``) names the model; ``weights_path`` is an adapter folder (or
    a whole-model folder), defaulting to the run's ``best/`` (``no_lora=True`` keeps the base
    model). ``task``: with ``data.datasets``, whose adapters (``lora.task_adapters``) to load.
    ``detection_threshold`` is the default score threshold; ``predict`` takes another per call.
    """

    def __init__(self, config_path: str | Path | None = None, weights_path: str | Path | None = None,
                 detection_threshold: float = DEFAULT_SCORE_THRESHOLD, *, config: Config | None = None, no_lora: bool = False,
                 resolution: int | None = None, mask_nms_iou: float | None = None, task: str | None = None):
        self.config = config or load_config(config_path)
        if resolution:
            self.config = self.config.model_copy(update={"model": self.config.model.model_copy(
                update={"image_size": resolution})})
        self.model, self.processor, self.weights = load_finetuned(self.config, weights_path, no_lora, task=task)
        self.device = next(self.model.parameters()).device
        self.threshold = check_threshold(detection_threshold)
        self.mask_nms_iou = mask_nms_iou
        # (active adapter or None for the base, prompt) -> (features (T, D), attention mask (T,))
        self._text_cache: dict[tuple[str | None, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._base = False   # inside base_model(): the adapter is switched off
        self._last_image: Image.Image | None = None

    # ---- adapters -------------------------------------------------------------------

    @property
    def adapter(self) -> str | None:
        """The adapter answering now: its name, or None for the base model."""
        if self._base or not has_adapter(self.model):
            return None
        return self.model.active_adapter

    def load_adapter(self, folder: str | Path, name: str) -> None:
        """Attach another adapter by ``name`` (the base stays shared); not yet active."""
        self.model = load_adapter(self.model, folder, adapter_name=name).to(self.device).eval()
        self._text_cache = {key: value for key, value in self._text_cache.items() if key[0] != name}

    def set_adapter(self, name: str) -> None:
        """Answer with adapter ``name`` from now on."""
        names = list(getattr(self.model, "peft_config", {}))
        if name not in names:
            raise PromptError(f"adapter {name!r} is not loaded; loaded: {', '.join(names) or 'none (base model only)'}")
        self.model.set_adapter(name)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[SAM3LoRAInference]:
        """Inside, the engine answers with adapter ``name`` (None: the base model); the
        previous adapter is restored on exit."""
        if name is None:
            with self.base_model():
                yield self
            return
        previous = self.adapter
        self.set_adapter(name)
        try:
            yield self
        finally:
            if previous is not None:
                self.set_adapter(previous)

    @contextlib.contextmanager
    def base_model(self) -> Iterator[SAM3LoRAInference]:
        """Inside, the engine answers as the base model (adapter switched off)."""
        with adapter_disabled(self.model):
            self._base, previous = True, self._base
            try:
                yield self
            finally:
                self._base = previous

    # ---- prompts ------------------------------------------------------------------

    def text_features(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, T, D) text features and (K, T) attention mask; each prompt tokenised and encoded
        once per adapter, then served from the cache."""
        adapter = self.adapter
        missing = [p for p in dict.fromkeys(prompts) if (adapter, p) not in self._text_cache]
        if missing:
            fresh = {k: v.to(self.device) for k, v in self.processor.text(missing).items()}
            with torch.no_grad():
                features = encode_text(self.model, fresh["input_ids"], fresh["attention_mask"])
            for prompt, feature, mask in zip(missing, features, fresh["attention_mask"], strict=True):
                self._text_cache[adapter, prompt] = (feature, mask)
        features, masks = zip(*(self._text_cache[adapter, p] for p in prompts), strict=True)
        return torch.stack(features), torch.stack(masks)

    def clear_text_cache(self) -> None:
        """Forget cached prompt features (after changing weights by hand)."""
        self._text_cache.clear()

    def _geometry(self, boxes: np.ndarray, negative: np.ndarray, size: tuple[int, int], rows: int) -> dict:
        """Box prompts as SAM3 inputs for ``rows`` queries: cxcywh in [0, 1], label 1/0."""
        if not len(boxes) and not len(negative):
            return {}
        cxcywh, labels = boxes_cxcywh(boxes, negative, size)
        return {"input_boxes": torch.from_numpy(cxcywh).to(self.device)[None].expand(rows, -1, -1),
                "input_boxes_labels": torch.from_numpy(labels).to(self.device)[None].expand(rows, -1)}

    # ---- prediction -----------------------------------------------------------------

    @torch.no_grad()
    def predict_batch(self, images: list, prompts: str | list[str] | None = None, boxes=None,
                      negative_boxes=None, *, threshold: float | None = None,
                      max_detections: int | None = None) -> list[list[dict]]:
        """Every prompt on every image: one vision-encoder pass per image, one batched call
        of the heads for all (image, prompt) rows. ``prompts`` is one phrase or a list;
        ``max_detections`` keeps that many best per prompt (masks are image-sized: this bounds
        memory whatever the threshold). Returns, per image, one dict per prompt."""
        pictures, threshold, names, texts, geometry = self._checked_request(images, prompts, boxes,
                                                                           negative_boxes, threshold)
        features, mask = self.text_features(texts)
        vision = encode_images(self.model, self.processor.images(pictures).to(self.device))
        answers = []
        for index, (picture, (positive, negative)) in enumerate(zip(pictures, geometry, strict=True)):
            rows = torch.full((len(texts),), index, dtype=torch.long, device=self.device)
            outputs = forward_queries(self.model, rows, vision=vision, text_features=features, attention_mask=mask,
                                      **self._geometry(positive, negative, picture.size, len(texts)))
            found = postprocess(outputs, [(picture.height, picture.width)] * len(texts), threshold,
                                self.mask_nms_iou, max_detections=max_detections)
            answers.append([{"prompt": name, "num_detections": len(d), "boxes": d.boxes, "scores": d.scores,
                             "masks": d.masks, "presence": d.presence} for name, d in zip(names, found, strict=True)])
        self._last_image = pictures[-1]
        return answers

    def segment(self, image, points=None, labels=None, box=None, mask=None) -> dict:
        """One object from clicks (``points`` (K, 2) x, y; ``labels`` 1 object / 0 not it),
        a ``box`` and / or a ``mask`` to refine, in pixels of ``image``: ``{"mask", "score",
        "object_score"}`` (``serve.tracker``). Needs ``model.task: interactive`` (the tracker)."""
        if self.config.model.task != "interactive":
            raise PromptError("segment: clicks, a box or a mask of one object need SAM3's tracker; use a "
                              "config with model.task=interactive (predict takes text and boxes)")
        picture = as_image(image)
        self._last_image = picture
        return segment_object(self.model, self.processor, picture, points, labels, box, mask)

    def track(self, video, prompts: str | list[str] | None = None, points=None, labels=None, boxes=None,
              frame: int = 0, fps: float | None = None):
        """Follow objects through ``video`` (a video file, a folder of frames, or a
        ``serve.video`` frame source): a generator of ``serve.video.TrackedFrame``, one per
        frame in order (ids, prompts, scores, (n, H, W) masks). Concepts from text
        ``prompts`` (``model.task: concept``: this engine's detector and adapter in SAM3's
        video model); or, with the tracker, the object of ``points`` (K, 2) / ``labels`` (K,)
        and at most one box, or one object per box of ``boxes`` (n, 4), all in pixels of frame
        ``frame``. Inputs are checked before anything runs; see ``serve.video``."""
        from sam3_lora.serve.video import track_video

        return track_video(self, video, prompts, points, labels, boxes, frame, fps)

