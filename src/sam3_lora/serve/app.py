"""The logic behind ``sam3-lora app``: one SAM3 in memory, adapters switched by name.

``AdapterApp`` loads the base model once and attaches every adapter of a run (``best/``,
``last/`` under ``output.dir``) and any ``--weights`` folder to it as PEFT named adapters, so
choosing another adapter in the page is a switch, not a reload; "base model" runs with the
adapter switched off (PEFT's ``disable_adapter``, as ``validate --compare-base`` does). One
lock serialises every use of the model: the page's queue already runs one request at a time,
the lock keeps that true for any other caller (two tabs, the Python API, tests).

Uploads arrive as bytes, never as paths: they are checked for size, decoded only as PNG,
JPEG, WebP, BMP or TIFF, and refused unread when their header announces more pixels than
``max_pixels`` (a decompression bomb). Every refusal is an ``AppError`` whose one-line message
the page shows as it is. The page itself is in ``serve.app_ui``; this module needs no gradio.

With ``model.task: interactive`` (SAM3's tracker) the app answers clicks instead of text:
``segment`` takes every click so far on one object (and an optional box) and answers with
that object's mask. The clicks are replayed through ``model.tracker.ObjectPredictor``, as
``validate`` runs its click protocol: each click refines the previous click's mask logits.
The image is encoded once per model (adapter or base) and kept for the next clicks
(``CACHED_ENCODINGS`` of them), so a click costs mask-decoder passes, not a ViT pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam3_lora.config import DEFAULT_SCORE_THRESHOLD, Config
from sam3_lora.data.images import to_rgb, upright
from sam3_lora.data.results import prediction_entries
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import write_file
from sam3_lora.model.tracker import ObjectPredictor
from sam3_lora.serve.inference import SAM3LoRAInference
from sam3_lora.serve.limits import (
    MAX_BOXES,
    MAX_CLICKS,
    MAX_DETECTIONS,
    MAX_PIXELS,
    MAX_PROMPT_PIXELS,
    MAX_PROMPT_TEXT,
    MAX_PROMPTS,
    MAX_UPLOAD_MB,
    UPLOAD_FORMATS,
)
from sam3_lora.serve.overlay import draw_clicks, draw_overlay, write_png
from sam3_lora.serve.prompts import as_prediction, check_boxes, check_points

BASE = "base model"   # the adapter choice that runs SAM3 with no adapter
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TABLE_HEADERS = ["model", "prompt", "score", "box (x1, y1, x2, y2)", "area (px)"]
CLICK_HEADERS = ["model", "predicted IoU", "object score", "mask area (px)", "clicks"]
CACHED_ENCODINGS = 4
"""Encoded images kept for the next clicks, one per (image, model): the current image with
an adapter and the base side by side, and the previous image's. One SAM3 image at 1008 px is
21 MB of features in float32 (32 x 288², 64 x 144², 256 x 72²), plus 330 kB of mask logits
per click replayed on it; for the tiny bundled base (112 px), 32 kB and 4 kB."""


class AppError(Sam3LoraError):
    """An input the app cannot use: an upload, a prompt, a box or an adapter name."""


# ---- inputs ---------------------------------------------------------------------------


def read_image(data: bytes, max_mb: float = MAX_UPLOAD_MB,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Uploaded bytes -> an RGB image, following the dataset conventions (EXIF orientation
    applied, alpha dropped, 16-bit scaled: ``data/images.py``), or an ``AppError`` saying why.

    The size in pixels is read from the header and checked before any pixel is decoded.
    """
    # The dataset readers' own helpers, so training and the app see the same pixels.
    if len(data) > max_mb * 1e6:
        raise AppError(f"upload is {len(data) / 1e6:.1f} MB, over this app's {max_mb:g} MB limit; "
                       f"upload a smaller image (the limit is set where the app is started)")
    try:
        # ``formats`` keeps PIL from trying its other (rarely used, less hardened) parsers.
        image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError:   # PIL's own refusal, far above ours
        raise AppError(f"upload has too many pixels (over {max_pixels / 1e6:g} MP): refused "
                       f"unread as a possible decompression bomb; downscale it") from None
    except (OSError, ValueError, SyntaxError):
        raise AppError("upload is not an image this app reads; upload a PNG, JPEG, WebP, BMP or "
                       "TIFF file") from None
    width, height = image.size
    if width * height > max_pixels:
        raise AppError(f"upload is {width}x{height} pixels ({width * height / 1e6:.0f} MP), over "
                       f"this app's {max_pixels / 1e6:g} MP limit: refused unread as a possible "
                       f"decompression bomb; downscale it")
    try:
        image.load()
        return to_rgb(upright(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AppError(f"upload could not be decoded as {image.format} ({reason}); "
                       f"re-export the image and upload it again") from None


def check_text(text: str | None, what: str) -> str:
    """``text`` if it fits the page's box (``MAX_PROMPT_TEXT`` characters), else an error;
    checked before any parsing, so a huge text costs nothing."""
    text = text or ""
    if not isinstance(text, str) or len(text) > MAX_PROMPT_TEXT:
        size = f"{len(text):,} characters" if isinstance(text, str) else "not text"
        raise AppError(f"{what}: {size}, over this app's {MAX_PROMPT_TEXT:,}; shorten them")
    return text


def parse_prompts(text: str | None) -> list[str]:
    """Comma- or newline-separated prompts, stripped, empty and repeated ones dropped."""
    text = check_text(text, "prompts")
    prompts = list(dict.fromkeys(p.strip() for p in re.split(r"[,\n]", text or "") if p.strip()))
    if len(prompts) > MAX_PROMPTS:
        raise AppError(f"prompts: {len(prompts)} given, at most {MAX_PROMPTS} per request; "
                       f"remove some")
    return prompts


def parse_boxes(text: str | None, size: tuple[int, int]) -> np.ndarray | None:
    """Box prompts written one per line as ``x1,y1,x2,y2`` in pixels -> (n, 4), or None."""
    boxes = []
    for number, line in enumerate(check_text(text, "box prompts").splitlines(), start=1):
        line = line.strip().strip("[]()").strip()
        if not line:
            continue
        try:
            values = [float(v) for v in re.split(r"[,\s]+", line) if v]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise AppError(f"box prompts, line {number}: {line!r} is not x1,y1,x2,y2; write one "
                           f"box per line in pixels, e.g. 10,20,200,180")
        boxes.append(values)
    if len(boxes) > MAX_BOXES:
        raise AppError(f"box prompts: {len(boxes)} given, at most {MAX_BOXES} per request; "
                       f"remove some")
    return check_boxes(boxes, size, what="box prompts") if boxes else None


def parse_box(text: str | None, size: tuple[int, int]) -> np.ndarray | None:
    """The one box around the clicked object, written ``x1,y1,x2,y2`` in pixels -> (4,), or
    None when the text is empty."""
    boxes = parse_boxes(text, size)
    if boxes is None:
        return None
    if len(boxes) != 1:
        raise AppError(f"box prompts: {len(boxes)} boxes given; the tracker takes one box around "
                       f"the one object: keep one line")
    return boxes[0]


def parse_clicks(points, labels, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clicks (K, 2) x, y in pixels of an image of ``size`` (W, H) and their (K,) labels, 1
    the object / 0 not it: at most ``MAX_CLICKS``, inside the image, or an error."""
    count = 0 if points is None else len(points)
    if count > MAX_CLICKS:
        raise AppError(f"clicks: {count} on one object, at most {MAX_CLICKS}; undo some or clear "
                       f"them and start again")
    return check_points(points, labels, size)


def check_budget(prompts: int, size: tuple[int, int], answers: int = 1) -> None:
    """Refuse a request whose masks could outgrow ``MAX_PROMPT_PIXELS`` (see limits.py):
    ``prompts`` (a box-only request is one) on an image of ``size`` (W, H), ``answers`` models."""
    width, height = size
    if prompts * width * height * answers <= MAX_PROMPT_PIXELS:
        return
    fits = MAX_PROMPT_PIXELS // (width * height * answers)
    twice = " side by side" if answers > 1 else ""
    advice = (f"use at most {fits} prompt{'s' * (fits != 1)} on this image{twice}, or a smaller "
              "image" if fits else f"downscale the image{' or turn side by side off' * (answers > 1)}")
    raise AppError(f"{prompts} prompt{'s' * (prompts != 1)} on a {width}x{height} image"
                   f"{twice} exceed this app's budget of {MAX_PROMPT_PIXELS / 1e6:g} megapixels x "
                   f"prompts; {advice}")


def bind_warning(host: str) -> str | None:
    """The warning to print when the app listens beyond this machine, else None."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: serving on {host}: anyone who can reach this machine can use the model and "
            f"upload images (there is no login); listen on 127.0.0.1 to keep it local")


def adapter_folders(config: Config, weights: list[str | Path] | tuple = ()) -> dict[str, Path]:
    """The adapters to offer, by display name: the run's ``best`` and ``last`` where they
    exist (``output.dir``), and of a run with an adapter per dataset and no shared one
    (``lora.task_adapters: per_task``) each dataset's, as ``best/NAME``; then each
    ``--weights`` folder under the path as given. (A ``both`` run's dataset adapters answer
    only beside its shared one: ``predict --task``, not offered alone.)"""
    run = Path(config.output.dir)
    found = {}
    for name in ("best", "last"):
        if (run / name / "adapter_config.json").is_file():
            found[name] = run / name
            continue
        found.update({f"{name}/{entry.name}": run / name / entry.name for entry in config.data.datasets
                      if (run / name / entry.name / "adapter_config.json").is_file()})
    for folder in weights:
        path = Path(folder)
        if any(path.resolve() == known.resolve() for known in found.values()):
            continue
        name = str(folder)
        found[name if name not in found and name != BASE else f"{name} (extra)"] = path
    return found


def synthetic_examples(count: int = 3, seed: int = 7) -> dict[str, bytes]:
    """A few PNGs of coloured shapes (``data/synth.py``), named by the concepts they show, so
    the page can be tried without an image at hand. Made in memory at start-up: nothing is
    shipped, and the page serves them by name, never by path."""
    examples = {}
    with tempfile.TemporaryDirectory(prefix="sam3-lora-examples-") as tmp:
        synthesize(Path(tmp) / "shapes", images_per_split={"train": count}, image_size=(320, 240),
                   background=["plain", "gradient", "stripes"], objects_per_image=(3, 5), seed=seed)
        split = Path(tmp) / "shapes" / "train"
        coco = json.loads((split / "_annotations.coco.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for number, image in enumerate(coco["images"], start=1):
            shown = sorted({names[a["category_id"]] for a in coco["annotations"]
                            if a["image_id"] == image["id"]})
            name = f"example {number}: {', '.join(shown)}"
            examples[name] = (split / image["file_name"]).read_bytes()
    return examples


# ---- results --------------------------------------------------------------------------


@dataclass
class ModelAnswer:
    """One model's answer to a request."""

    model: str
    """The adapter's display name, or ``BASE``."""
    overlay: Image.Image
    predictions: list[dict]
    """One dict per prompt, as ``SAM3LoRAInference.predict`` returns them."""
    seconds: float

    def rows(self) -> list[list]:
        """The detections table: model, prompt, score, box, area in pixels; best first."""
        rows = [[self.model, p["prompt"], round(float(score), 3),
                 ", ".join(f"{v:.1f}" for v in box), int(mask.sum())]
                for p in self.predictions
                for score, box, mask in zip(p["scores"], p["boxes"], p["masks"], strict=True)]
        return sorted(rows, key=lambda row: -row[2])

    def coco(self) -> list[dict]:
        """COCO results entries exactly as ``sam3-lora predict`` writes them (image_id 0)."""
        return prediction_entries(self.predictions, image_id=0)

    def describe(self) -> str:
        """One line: the model, its detections and the time taken."""
        count = len(self.rows())
        return f"{self.model}: {count} detection{'s' * (count != 1)} in {self.seconds:.2f} s"


@dataclass
class ClickAnswer(ModelAnswer):
    """One model's answer to clicks on one object: ``predictions`` holds that object as one
    detection (``serve.prompts.as_prediction``: its score is the predicted IoU, ``presence``
    the object score), the overlay shows it with the clicks."""

    clicks: int = 0

    def rows(self) -> list[list]:
        """The table: model, predicted IoU, object score, mask area in pixels, clicks."""
        found = self.predictions[0]
        return [[self.model, round(float(found["scores"][0]), 3), round(float(found["presence"]), 3),
                 int(found["masks"][0].sum()), self.clicks]]

    def describe(self) -> str:
        found = self.predictions[0]
        return (f"{self.model}: mask of {int(found['masks'][0].sum()):,} px (predicted IoU "
                f"{float(found['scores'][0]):.2f}) in {self.seconds:.2f} s")


@dataclass
class AppResult:
    """What one request produced: the chosen model's answer, then the base model's when side
    by side."""

    answers: list[ModelAnswer] = field(default_factory=list)

    def rows(self) -> list[list]:
        return [row for answer in self.answers for row in answer.rows()]

    def summary(self) -> str:
        """One line: what each model found and the time it took."""
        return " · ".join(answer.describe() for answer in self.answers)

    def save(self, folder: str | Path) -> list[Path]:
        """Overlay PNG and COCO-results JSON of each model into ``folder`` (new files: nothing
        is overwritten); returns the paths, overlay then JSON, model by model."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths, stems = [], set()
        for answer in self.answers:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", answer.model).strip("-.") or "adapter"
            stem = stem if stem not in stems else f"{stem}-{len(stems)}"   # "a b" and "a-b"
            stems.add(stem)
            paths += [write_png(answer.overlay, folder / f"{stem}-overlay.png"),
                      write_file(folder / f"{stem}-detections.json", json.dumps(answer.coco()))]
        return paths


@dataclass
class _Encoded:
    """One image encoded for one model, and the clicks last replayed on it: after click i,
    ``logits[i]`` is the mask (logits, (1, 1, m, m)) fed back to click i + 1. The next request resumes after the clicks it shares with these (one click added: one
    decoder pass; one undone: one pass)."""

    predictor: ObjectPredictor
    box: tuple | None = None
    clicks: list[tuple] = field(default_factory=list)
    logits: list = field(default_factory=list)

    def shared(self, box: tuple | None, clicks: list[tuple]) -> int:
        """How many leading ``clicks`` (with the same ``box``) were replayed already (and have
        their logits: a replay cut short by an error keeps only the steps it finished)."""
        if box != self.box:
            return 0
        count = 0
        for old, new in zip(self.clicks[:len(self.logits)], clicks):
            if old != new:
                break
            count += 1
        return count


class _Recorded:
    """A model that remembers its last output: ``ObjectPredictor`` answers with a mask only,
    the app also shows the predicted IoU and the object score of that mask."""

    def __init__(self, model):
        self.model, self.output = model, None

    def __call__(self, **inputs):
        self.output = self.model(**inputs)
        return self.output


# ---- the model --------------------------------------------------------------------------


class AdapterApp:
    """SAM3 loaded once, with the run's adapters attached by name, answering one request at a
    time. ``weights``: extra adapter folders; the limits bound what an upload may be."""

    def __init__(self, config: Config, weights: list[str | Path] | tuple = (), *,
                 max_upload_mb: float = MAX_UPLOAD_MB, max_pixels: int = MAX_PIXELS):
        self.config = config
        self.max_upload_mb, self.max_pixels = max_upload_mb, max_pixels
        self.engine = SAM3LoRAInference(config=config, no_lora=True)
        self.folders = adapter_folders(config, weights)
        self._peft_names: dict[str, str] = {}   # display name -> PEFT adapter name (a safe key)
        for index, (name, folder) in enumerate(self.folders.items()):
            peft_name = f"adapter_{index}"
            self.engine.load_adapter(folder, peft_name)
            self._peft_names[name] = peft_name
        self._lock = threading.Lock()
        # (image fingerprint, model) -> the tracker with that image encoded, newest last
        self._encoded: OrderedDict[tuple[str, str], _Encoded] = OrderedDict()

    @property
    def task(self) -> str:
        """``concept`` (text and box prompts, the detector) or ``interactive`` (clicks)."""
        return self.config.model.task

    @property
    def choices(self) -> list[str]:
        """Adapter names for the page: the run's and ``--weights`` folders, then ``BASE``."""
        return [*self._peft_names, BASE]

    def read_image(self, data: bytes) -> Image.Image:
        return read_image(data, self.max_upload_mb, self.max_pixels)

    def predict(self, image: Image.Image | bytes | None, prompts_text: str = "",
                boxes_text: str = "", threshold: float = DEFAULT_SCORE_THRESHOLD, adapter: str = BASE,
                side_by_side: bool = False) -> AppResult:
        """Run the prompts on ``image`` (an RGB image, or uploaded bytes) with ``adapter``, and
        with the base model beside it when ``side_by_side``. Inputs are checked before the
        model is touched; each check fails with an ``AppError`` naming the field."""
        if self.task == "interactive":
            raise AppError("this app serves SAM3's tracker (model.task=interactive): click on the "
                           "object; text prompts need a config with model.task=concept")
        picture = self._picture(image)
        prompts = parse_prompts(prompts_text)
        boxes = parse_boxes(boxes_text, picture.size)
        if not prompts and boxes is None:
            raise AppError("no prompt: type a text prompt (e.g. red circle) or a box x1,y1,x2,y2")
        self._check_models(adapter, side_by_side)
        if not 0.0 <= float(threshold) <= 1.0:   # also refuses NaN
            raise AppError(f"threshold {threshold}: must be between 0 and 1")
        check_budget(len(prompts) or 1, picture.size, 2 if side_by_side else 1)
        answers = []
        with self._lock:
            for name in [adapter, BASE] if side_by_side else [adapter]:
                start = time.perf_counter()
                with self.engine.using(self._peft_names.get(name)):
                    found = self.engine.predict(picture, prompts, boxes, threshold=float(threshold),
                                                max_detections=MAX_DETECTIONS)
                answers.append((name, found, time.perf_counter() - start))
        # Drawing needs no model: outside the lock, so the next request can start.
        return AppResult([ModelAnswer(name, draw_overlay(picture, found), found, seconds)
                          for name, found, seconds in answers])

    def segment(self, image: Image.Image | bytes | None, points=None, labels=None, box_text: str = "",
                adapter: str = BASE, side_by_side: bool = False) -> AppResult:
        """One object of ``image`` from clicks (``points`` (K, 2) x, y in pixels of the image,
        ``labels`` (K,) 1 the object / 0 not it, in the order they were made) and / or one box
        (``box_text`` ``x1,y1,x2,y2``), with ``adapter``, and with the base model beside it when
        ``side_by_side``. ``model.task: interactive`` only; inputs are checked before the model
        is touched, each failing with an ``AppError`` naming the field."""
        if self.task != "interactive":
            raise AppError("clicks need SAM3's tracker: start the app with a config whose "
                           "model.task is interactive (this one detects concepts from text)")
        picture = self._picture(image)
        points, labels = parse_clicks(points, labels, picture.size)
        box = parse_box(box_text, picture.size)
        if points is None and box is None:
            raise AppError("no prompt: click on the object, or give a box x1,y1,x2,y2")
        self._check_models(adapter, side_by_side)
        key = self._fingerprint(picture)
        answers = []
        with self._lock:
            for name in [adapter, BASE] if side_by_side else [adapter]:
                start = time.perf_counter()
                with self.engine.using(self._peft_names.get(name)):
                    found = self._replay(self._predictor(key, name, picture), points, labels, box)
                answers.append((name, found, time.perf_counter() - start))
        clicks = 0 if points is None else len(points)
        # The overlay is what ``sam3-lora predict --points`` writes, with the prompt drawn on it.
        return AppResult([ClickAnswer(name, draw_clicks(draw_overlay(picture, [found]), points, labels, box),
                                      [found], seconds, clicks)
                          for name, found, seconds in answers])

    # ---- checks and clicks ---------------------------------------------------------------

    def _picture(self, image: Image.Image | bytes | None) -> Image.Image:
        """The request's image as RGB: given as one, or decoded from uploaded bytes."""
        if image is None:
            raise AppError("no image: upload one or pick an example")
        return image.convert("RGB") if isinstance(image, Image.Image) else self.read_image(image)

    def _check_models(self, adapter: str, side_by_side: bool) -> None:
        if adapter not in self.choices:
            raise AppError(f"adapter {adapter!r} is not loaded; choose one of: "
                           f"{', '.join(self.choices)}")
        if side_by_side and adapter == BASE:
            raise AppError("side by side compares an adapter with the base model; "
                           "choose an adapter")

    @staticmethod
    def _fingerprint(picture: Image.Image) -> str:
        """Names an image by its pixels: the same picture sent again finds its encoding."""
        digest = hashlib.blake2b(picture.tobytes(), digest_size=16)
        digest.update(repr(picture.size).encode())
        return digest.hexdigest()

    def _predictor(self, key: str, model: str, picture: Image.Image) -> _Encoded:
        """The tracker on ``picture`` for ``model`` (an adapter or ``BASE``, already active),
        encoded at its first click and kept for the next ones (``CACHED_ENCODINGS``)."""
        if (key, model) in self._encoded:
            self._encoded.move_to_end((key, model))
            return self._encoded[key, model]
        parameter = next(self.engine.model.parameters())
        pixels = self.engine.processor.images([picture]).to(parameter.device, parameter.dtype)
        predictor = ObjectPredictor(_Recorded(self.engine.model), pixels, (picture.height, picture.width))
        self._encoded[key, model] = _Encoded(predictor)
        while len(self._encoded) > CACHED_ENCODINGS:
            self._encoded.popitem(last=False)
        return self._encoded[key, model]

    @staticmethod
    def _replay(encoded: _Encoded, points: np.ndarray | None, labels: np.ndarray | None,
                box: np.ndarray | None) -> dict:
        """The object after every click in order, each refining the previous click's mask
        (``validate``'s click protocol), as one detection (``serve.prompts.as_prediction``).

        The answer depends on the clicks alone, as if replayed from the first (undoing a click
        gives back the mask shown before it); the clicks already replayed on this image are
        resumed from their stored mask logits, so only the new ones run the decoder."""
        clicks = [] if points is None else [(*map(float, p), int(m)) for p, m in zip(points, labels, strict=True)]
        frame = None if box is None else tuple(map(float, box))
        # The last click always runs: it gives the full-size mask.
        done = min(encoded.shared(frame, clicks), max(len(clicks) - 1, 0))
        predictor = encoded.predictor
        predictor.previous = encoded.logits[done - 1] if done else None
        encoded.box, encoded.clicks = frame, clicks
        del encoded.logits[done:]
        for step in range(done + 1, len(clicks) + 1) if clicks else [None]:
            mask = predictor(None if step is None else points[:step],
                             None if step is None else labels[:step], box)
            encoded.logits.append(predictor.previous)
        output = predictor.model.output
        answer = {"mask": mask.numpy(), "score": float(output.iou_scores[0, 0].float().max()),
                  "object_score": float(torch.sigmoid(output.object_score_logits.float()).flatten()[0])}
        return as_prediction(answer)
