"""Tracking through a video: ``SAM3LoRAInference.track`` and ``sam3-lora track``.

Two ways in, both a generator of per-frame results (``TrackedFrame``) in frame order:

- concept prompts (``model.task: concept``): SAM3's video model (``Sam3VideoModel``) finds
  every instance of each phrase on every frame and keeps an identity per instance; its
  detector is the engine's own, adapter included (an adapter trained on images).
- one or more objects from clicks and / or boxes on frame ``frame`` (``model.task:
  interactive``, or a video adapter): SAM3's video tracker follows them forwards and, from
  a later frame, backwards to frame 0; its image modules are the engine's tracker's, adapter
  included (``model.video.share_image_tracker``), so on that frame it answers as
  ``segment`` does on the frame as an image (except that, as SAM 2's video tracker does, an
  object it judges absent there, object score under 0.5, has an empty mask).

Frames come from a folder of images (sorted as ``data.video.layout`` sorts frames) or a
video file (decoded with PyAV: ``pip install 'sam3-lora[video]'``), one at a time as the model
asks for them (``FrameFeed``); transformers' session keeps its state in CPU memory
(``OFFLOADED``) and is trimmed to what tracking reads next (``model.video.fit_session``). What stays in memory is therefore a few frames, the memory of
the last ``memory_window`` frames, and the results so far as RLE; except that prompting on a
later frame ``K`` first tracks frames ``K..0`` backwards, holding those ``K + 1`` frames at the
model's input size (3 bytes a pixel: 38 KB each at 112 px, 3 MB at 1008) until then.

A ``TrackedFrame`` holds, for the n objects present on it::

    index       int           the frame's position, from 0
    name        str           its file stem (a folder) or its number (a video file), 5 digits
    image       PIL RGB       the frame, W x H
    object_ids  (n,) int      identities, the same object keeping its id on every frame
    prompts     list[str]     each object's phrase ("object" for clicks and boxes)
    scores      (n,) float    concept: detection score; clicks: the probability it is there
    masks       (n, H, W) bool

Writers (``TrackWriter``) turn the frames into an overlay video, YouTube-VIS results JSON
(one entry per object: per-frame RLE or null, its score, prompt and category) and, on
request, per-frame PNGs: DAVIS index masks (pixel value = object id) and overlays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam3_lora.data.images import IMAGE_SUFFIXES, UnreadableImage, image_size, open_image
from sam3_lora.data.rle import as_compressed, decode, encode
from sam3_lora.data.video.layout import frame_order
from sam3_lora.data.video.synth import davis_palette
from sam3_lora.errors import AdapterError, Sam3LoraError
from sam3_lora.files import write_file
from sam3_lora.lora.adapter import read_metadata
from sam3_lora.lora.weights import ADAPTER_CONFIG
from sam3_lora.model.processing import IMAGE_MEAN, IMAGE_STD, normalize
from sam3_lora.model.video import (
    OFFLOADED,
    fit_session,
    install_postprocessing_fallback,
    load_video_model,
    load_video_tracker,
    memory_window,
    object_logits,
    share_image_tracker,
    tracker_session,
)
from sam3_lora.serve.overlay import draw_masks, prompt_color, write_png
from sam3_lora.serve.prompts import PromptError, check_object_prompt

VIDEO_EXTRA = "pip install 'sam3-lora[video]'"
DEFAULT_FPS = 24.0
"""Frames per second of the overlay video made from a folder of frames (a file keeps its own)."""
OBJECT_PROMPT = "object"
"""The prompt name of objects given by clicks or boxes."""
BOX_LABELS = (2, 3)
"""SAM's point labels of a box's top-left and bottom-right corners (how the video tracker
takes a box: two points before the clicks, as transformers' processor gives them)."""
OVERLAY_VIDEO, MASKLETS_FILE, MASKS_DIR, OVERLAYS_DIR = "overlay.mp4", "masklets.json", "masks", "overlays"
TRACKER_MODEL_TYPES = ("sam3_tracker", "sam3_tracker_video")
"""``model_type`` of the bases a tracker's adapter is trained on."""
X264_PRESET = "veryfast"
VIDEO_CODECS = ("libx264", "mpeg4")
"""The overlay video's codec: H.264 where FFmpeg has it, else MPEG-4 part 2."""


class VideoInputError(Sam3LoraError):
    """A video, its frames or a tracking request that cannot be used."""


# ---- frames in --------------------------------------------------------------------------

class FrameFolder:
    """The frames of a folder of images, in ``frame_order``, decoded when iterated."""

    def __init__(self, folder: str | Path, fps: float = DEFAULT_FPS):
        self.folder, self.fps = Path(folder), fps
        self.paths = sorted((p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                             and not p.name.startswith(".") and p.is_file()), key=lambda p: frame_order(p.name))
        if not self.paths:
            raise VideoInputError(f"{folder}: no frame images in this folder; give a folder of frames "
                                  f"(.jpg, .png ...) or a video file", option="video")
        try:
            self.size = image_size(self.paths[0])   # (W, H)
        except UnreadableImage as error:
            raise _unreadable_frame(error) from None

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index].stem

    def frames(self) -> Iterator[Image.Image]:
        """Each frame as RGB, in order; an unreadable one, or one of another size, stops with one line."""
        for path in self.paths:
            try:
                image = open_image(path)
            except UnreadableImage as error:
                raise _unreadable_frame(error) from None
            if image.size != self.size:
                raise VideoInputError(f"frame {path}: {image.size[0]}x{image.size[1]}, but the first frame is "
                                      f"{self.size[0]}x{self.size[1]}; give frames of one size", option="video")
            yield image


class VideoFile:
    """The frames of a video file, decoded in order with PyAV when iterated."""

    def __init__(self, path: str | Path):
        av = require_pyav("reading a video file")
        self.path = Path(path)
        try:
            with av.open(str(self.path)) as container:
                stream = _video_stream(container, self.path)
                self.size = (stream.codec_context.width, stream.codec_context.height)
                self.fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
                # The container's count, else counted packet by packet (no decoding).
                self.count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        except (av.FFmpegError, OSError) as error:
            raise VideoInputError(f"cannot read video {self.path}: {_first_line(error)}; give a video file FFmpeg "
                                  f"decodes, or a folder of its frames", option="video") from None
        if not self.count or not all(self.size):
            raise VideoInputError(f"video {self.path}: holds no frame; give another video", option="video")

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"{index:05d}"

    def frames(self) -> Iterator[Image.Image]:
        av = require_pyav("reading a video file")
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(_video_stream(container, self.path)):
                    yield frame.to_image()   # RGB
        except (av.FFmpegError, OSError) as error:
            raise VideoInputError(f"cannot decode video {self.path}: {_first_line(error)}; re-encode it or give "
                                  f"a folder of its frames", option="video") from None


def open_video(spec: str | Path, fps: float | None = None) -> FrameFolder | VideoFile:
    """A folder of frames or a video file; ``fps`` sets a folder's frame rate."""
    path = Path(spec)
    if path.is_dir():
        return FrameFolder(path, fps or DEFAULT_FPS)
    if not path.is_file():
        raise VideoInputError(f"{spec}: no such video file or folder of frames", option="video")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise VideoInputError(f"{spec}: is one image; give a video file or a folder of frames "
                              f"(sam3-lora predict segments one image)", option="video")
    return VideoFile(path)


def require_pyav(what: str):
    try:
        import av
    except ImportError:
        raise VideoInputError(f"{what} needs PyAV, which is not installed: {VIDEO_EXTRA} (a folder of frames "
                              f"needs nothing more)") from None
    return av


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoInputError(f"{path}: has no video stream; give a video file", option="video")
    return container.streams.video[0]


def _unreadable_frame(error: UnreadableImage) -> VideoInputError:
    return VideoInputError(f"cannot read frame {error.path}: {error.reason}; replace or remove it", option="video")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class FrameFeed(Mapping):
    """A session's ``processed_frames`` that decodes frames as the model asks for them (in
    order) and forgets them ``keep`` frames later: transformers' sessions otherwise hold the
    whole video. ``image(i)`` is frame ``i`` as decoded (for the writers), ``self[i]`` its
    ``pixel_values`` (3, S, S)."""

    def __init__(self, source, processor, dtype: torch.dtype, keep: int = 2):
        self.source, self.processor, self.dtype, self.keep = source, processor, dtype, keep
        self._frames = iter(source.frames())
        self._images: dict[int, Image.Image] = {}
        self._pixels: dict[int, torch.Tensor] = {}
        self.latest = -1

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        return iter(range(len(self)))

    def image(self, index: int) -> Image.Image:
        while self.latest < index:
            try:
                picture = next(self._frames)
            except StopIteration:
                raise VideoInputError(f"{_source_name(self.source)}: ends after {self.latest + 1} frames, though it "
                                      f"says it has {len(self.source)}; re-encode it", option="video") from None
            self.latest += 1
            self._images[self.latest] = picture
            for old in [i for i in self._images if i <= self.latest - self.keep]:
                self._images.pop(old)
                self._pixels.pop(old, None)
        return self._images[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._pixels:
            self._pixels[index] = self.processor.images([self.image(index)])[0].to(self.dtype)
        return self._pixels[index]


class HeldFrames(Mapping):
    """``processed_frames`` for tracking backwards from frame ``K``: frames ``0..K`` decoded
    once and held at the model's input size as uint8 (the processor's resize, rounded: 3
    bytes a pixel instead of 12; ``K`` itself exactly as ``FrameFeed`` gives it). Its length
    is the whole video's, as the tracker reads the video's length."""

    def __init__(self, source, processor, dtype: torch.dtype, last: int):
        self.length, self.dtype = len(source), dtype
        self._held: dict[int, torch.Tensor] = {}
        for index, picture in zip(range(last + 1), source.frames()):
            pixels = processor.images([picture])[0]
            if index == last:
                self._last = (index, pixels.to(dtype))
            else:
                self._held[index] = ((pixels * IMAGE_STD + IMAGE_MEAN) * 255).round().clamp(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(range(self.length))

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self._last[0]:
            return self._last[1]
        return normalize(self._held[index]).to(self.dtype)


def _source_name(source) -> str:
    return str(getattr(source, "path", getattr(source, "folder", "video")))


# ---- what is tracked ---------------------------------------------------------------------

@dataclass
class ObjectPrompt:
    """One object to follow, from clicks and / or a box on one frame, in pixels of the frame."""

    object_id: int
    points: np.ndarray | None = None   # (P, 2) x, y
    labels: np.ndarray | None = None   # (P,) 1 object / 0 not it
    box: np.ndarray | None = None      # (4,) x1, y1, x2, y2


@dataclass
class TrackedFrame:
    """One frame's objects (see the module docstring for the fields' shapes)."""

    index: int
    name: str
    image: Image.Image
    object_ids: np.ndarray
    prompts: list[str]
    scores: np.ndarray
    masks: np.ndarray


def object_prompts(points=None, labels=None, boxes=None) -> list[ObjectPrompt]:
    """The objects a request names: clicks (``points`` (P, 2), ``labels`` (P,)) are one
    object, with at most one box of ``boxes`` ((n, 4) x1, y1, x2, y2); boxes alone are one
    object each. Ids from 1, in that order."""
    box_list = [] if boxes is None else [np.asarray(b, dtype=float) for b in np.asarray(boxes, dtype=float).reshape(-1, 4)]
    if points is not None and len(points):
        if len(box_list) > 1:
            raise PromptError("clicks are one object: give at most one box with them (several boxes alone are "
                              "one object each)", option="boxes")
        return [ObjectPrompt(1, np.asarray(points, dtype=float).reshape(-1, 2),
                             None if labels is None else np.asarray(labels).reshape(-1),
                             box_list[0] if box_list else None)]
    if labels is not None and len(labels):
        raise PromptError("labels: given without points; give one label per point", option="labels")
    if not box_list:
        raise PromptError("no object to track: give points (clicks) and / or boxes on the prompted frame")
    return [ObjectPrompt(index + 1, box=box) for index, box in enumerate(box_list)]


def checked_objects(objects: list[ObjectPrompt], size: tuple[int, int], frame: int = 0) -> list[ObjectPrompt]:
    """Each object's prompt checked against a frame of ``size`` (W, H) as ``segment`` checks
    one (``serve.prompts.check_object_prompt``): points and boxes inside the frame (the
    message names the frame, ``frame``)."""
    checked = []
    for item in objects:
        try:
            points, labels, box = check_object_prompt(item.points, item.labels, item.box, None, size)
        except PromptError as error:
            raise PromptError(f"frame {frame}: {error.message}", option=error.option) from None
        checked.append(ObjectPrompt(item.object_id, points, labels, None if box is None else box[0]))
    return checked


def check_frame(frame: int, length: int) -> int:
    """``frame`` as an index into a video of ``length`` frames, or one line."""
    if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool) or not 0 <= frame < length:
        raise VideoInputError(f"frame {frame}: the video has {length} frames; give a frame from 0 to {length - 1}",
                              option="frame")
    return int(frame)


# ---- tracking ----------------------------------------------------------------------------

@dataclass
class TrackRequest:
    """A tracking request checked against its video: the phrases (concepts) or the objects
    and the frame they are prompted on (the tracker)."""

    texts: list[str]
    objects: list[ObjectPrompt]
    start: int


def check_request(task: str, source, prompts=None, points=None, labels=None, boxes=None,
                  frame: int = 0) -> TrackRequest:
    """Every input of a tracking request checked against ``model.task`` (``task``) and the
    video ``source``, in one line each, before a model loads: text prompts need the detector
    (``concept``), clicks and boxes the tracker; points and boxes inside the frame; ``frame``
    in the video."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if task == "concept":
        if not texts:
            raise PromptError("points and boxes of single objects need SAM3's tracker (a config with "
                              "model.task=interactive); give text prompts to track concepts", option="prompts")
        if points is not None or boxes is not None:
            raise PromptError("the concept model (model.task=concept) takes text prompts, not points or boxes; "
                              "drop them, or use a config with model.task=interactive", option="points")
        if frame:
            raise VideoInputError(f"frame {frame}: concepts are found on every frame from the first; the frame "
                                  f"applies to clicks and boxes (model.task=interactive)", option="frame")
        return TrackRequest(list(dict.fromkeys(texts)), [], 0)
    if texts:
        raise PromptError(f"text prompts need SAM3's detector, and this model is a tracker (model.task={task}); "
                          f"give points or boxes, or a config with model.task=concept", option="prompts")
    start = check_frame(frame, len(source))
    return TrackRequest([], checked_objects(object_prompts(points, labels, boxes), source.size, start), start)


def check_adapter_task(folder: str | Path | None, task: str) -> None:
    """Refuse, in one line before anything loads, an adapter made for the other model: a
    tracker's (``model.task: interactive``) asked to track concepts, or a detector's
    (``concept``) asked to follow clicks. Folders that are not adapters, or hold no
    description of their base (plain PEFT), are left to the loading's own checks."""
    if folder is None or not (Path(folder) / ADAPTER_CONFIG).is_file():
        return
    base = read_metadata(folder).get("base_model", {}).get("architecture", {}).get("model_type")
    if task == "concept" and base in TRACKER_MODEL_TYPES:
        raise AdapterError(f"{folder}: a tracker's adapter (trained with model.task=interactive) cannot find "
                           f"concepts; track with it from clicks or boxes and a config with model.task=interactive",
                           option="weights")
    if task != "concept" and base == "sam3":
        raise AdapterError(f"{folder}: a detector's adapter (trained with model.task=concept) cannot follow clicks; "
                           f"track with it from text prompts and a config with model.task=concept", option="weights")


def track_video(engine, video, prompts=None, points=None, labels=None, boxes=None, frame: int = 0,
                fps: float | None = None) -> Iterator[TrackedFrame]:
    """What ``SAM3LoRAInference.track`` answers (see the module docstring). Every input is
    checked here (``check_request``), before the video model loads or a frame is tracked."""
    source = video if hasattr(video, "frames") else open_video(video, fps)
    request = check_request(engine.config.model.task, source, prompts, points, labels, boxes, frame)
    if request.texts:
        return _track_concepts(video_model(engine), source, request.texts)
    return _track_objects(video_tracker(engine), source, request.objects, request.start)


def video_tracker(engine):
    """The engine's video tracker, built once: with ``model.task: video`` the engine's own
    model (its adapter, memory included, acts as trained on clips); else the video tracker of
    ``model.source``, with the engine's image tracker in place of its own image modules when
    the engine holds trained weights (an adapter or a full fine-tune: they act in tracking too).
    Without them the video tracker stays whole: a bundled base's was trained with a mask
    decoder of its own (``model.video.BUNDLED_VIDEO_TRACKER``)."""
    if getattr(engine, "_video", None) is not None:
        return engine._video
    config = engine.config.model
    if config.task == "video":
        own = engine.model.get_base_model() if hasattr(engine.model, "get_base_model") else engine.model
        engine._video = (own.eval(), engine.processor)   # PEFT's layers sit in the base model's modules
    else:
        loaded = load_video_tracker(config.source, revision=config.revision, image_size=config.image_size,
                                    seed=engine.config.training.seed, dtype=_dtype(engine.model),
                                    width=config.tracker_width)
        video = loaded.model if engine.weights is None else share_image_tracker(loaded.model, engine.model)
        engine._video = (video.to(engine.device).eval(), loaded.processor)
    return engine._video


def video_model(engine):
    """The engine's concept video model, built once around the engine's detector (its adapter
    included)."""
    if getattr(engine, "_video", None) is None:
        config = engine.config.model
        loaded = load_video_model(config.source, revision=config.revision, image_size=config.image_size,
                                  seed=engine.config.training.seed, dtype=_dtype(engine.model), detector=engine.model)
        engine._video = (loaded.model.to(engine.device).eval(), loaded.processor)
    return engine._video


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.inference_mode()
def _track_objects(built, source, objects: list[ObjectPrompt], start: int) -> Iterator[TrackedFrame]:
    """The video tracker on ``objects`` prompted on frame ``start``: frames before it tracked
    backwards first (held as RLE), then every frame in order."""
    model, processor = built
    dtype = _dtype(model)
    session = tracker_session(model, source.size)
    for item in objects:
        session.add_point_inputs(session.obj_id_to_idx(item.object_id), start,
                                 _point_inputs(item, source.size, processor.image_size))
    session.obj_with_new_inputs = [item.object_id for item in objects]
    window = memory_window(model.config)
    earlier: dict[int, tuple[np.ndarray, np.ndarray, list[dict]]] = {}   # ids, scores, RLEs
    if start > 0:
        session.processed_frames = HeldFrames(source, processor, dtype, start)
        model(session, frame_idx=start)
        for out in model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=True):
            if out.frame_idx < start:
                ids, scores, masks = _object_masks(out, source.size)
                earlier[out.frame_idx] = (ids, scores, [encode(mask) for mask in masks])
            fit_session(session, out.frame_idx, window, reverse=True)
        for outputs in session.output_dict_per_obj.values():   # forwards from the prompt alone
            outputs["non_cond_frame_outputs"].clear()
        for tracked in session.frames_tracked_per_obj.values():
            tracked.clear()
    feed = FrameFeed(source, processor, dtype)
    session.processed_frames = feed
    for index in range(start):
        ids, scores, rles = earlier.pop(index)
        masks = np.stack([decode(as_compressed(rle)).astype(bool) for rle in rles])
        yield TrackedFrame(index, source.name(index), feed.image(index), ids, [OBJECT_PROMPT] * len(ids), scores,
                           masks)
    for out in model.propagate_in_video_iterator(session, start_frame_idx=start):
        ids, scores, masks = _object_masks(out, source.size)
        fit_session(session, out.frame_idx, window)
        yield TrackedFrame(out.frame_idx, source.name(out.frame_idx), feed.image(out.frame_idx), ids,
                           [OBJECT_PROMPT] * len(ids), scores, masks)


def _point_inputs(item: ObjectPrompt, size: tuple[int, int], side: int) -> dict[str, torch.Tensor]:
    """One object's clicks and box as the video tracker takes them: (1, 1, P, 2) points in
    pixels of its S x S input (the box's corners first, labels 2 and 3) and (1, 1, P) labels."""
    scale = np.array([side / size[0], side / size[1]])
    points, labels = [], []
    if item.box is not None:
        points += list(item.box.reshape(2, 2) * scale)
        labels += list(BOX_LABELS)
    if item.points is not None:
        points += list(item.points * scale)
        labels += [int(label) for label in item.labels]
    return {"point_coords": torch.tensor(np.array(points), dtype=torch.float32)[None, None],
            "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]}


def _object_masks(out, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The video tracker's output on one frame -> object ids (n,), the probability each is
    there (n,), masks (n, H, W) bool (low-resolution logits resized bilinearly, as ``segment``
    resizes them, then > 0)."""
    ids, scores, logits = object_logits(out, size)
    return ids, scores, (logits > 0).numpy()


@torch.inference_mode()
def _track_concepts(built, source, texts: list[str]) -> Iterator[TrackedFrame]:
    """``Sam3VideoModel`` on the phrases ``texts``, every frame in order (its hot start holds
    results back ``hotstart_delay`` frames, so the feed keeps that many frames)."""
    from transformers import Sam3VideoInferenceSession

    model, processor = built
    install_postprocessing_fallback()
    dtype, device = _dtype(model), next(model.parameters()).device
    width, height = source.size
    session = Sam3VideoInferenceSession(video_height=height, video_width=width, inference_device=device, dtype=dtype,
                                        **OFFLOADED)
    for text in texts:
        prompt_id = session.add_prompt(text)
        tokens = {key: value.to(device) for key, value in processor.text([text]).items()}
        session.prompt_input_ids[prompt_id] = tokens["input_ids"]
        session.prompt_attention_masks[prompt_id] = tokens["attention_mask"]
    feed = FrameFeed(source, processor, dtype, keep=model.hotstart_delay + 2)
    session.processed_frames = feed
    window = memory_window(model.tracker_model.config) + model.hotstart_delay
    for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
        fit_session(session, feed.latest, window)
        ids, prompts, scores, masks = _concept_masks(out, session, source.size)
        yield TrackedFrame(out.frame_idx, source.name(out.frame_idx), feed.image(out.frame_idx), ids, prompts,
                           scores, masks)


def _concept_masks(out, session, size: tuple[int, int]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """``Sam3VideoModel``'s output on one frame -> ids, prompts, detection scores and masks
    of the objects shown: as transformers' ``Sam3VideoProcessor.postprocess_outputs`` (which
    needs torchvision) does it: masks resized bilinearly and > 0, empty ones, suppressed ones
    and those its hot start removed left out, and, within one prompt, a pixel claimed by
    several objects given to the one the tracker is surest of."""
    hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
    ids = [obj_id for obj_id in sorted(out.obj_id_to_mask) if obj_id not in hidden]
    width, height = size
    if not ids:
        return np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros((0, height, width), dtype=bool)
    logits = torch.cat([out.obj_id_to_mask[obj_id] for obj_id in ids]).float()   # (n, m, m)
    masks = F.interpolate(logits[:, None], size=(height, width), mode="bilinear")[:, 0] > 0
    keep = masks.flatten(1).any(1)
    ids = [obj_id for obj_id, kept in zip(ids, keep.tolist(), strict=True) if kept]
    masks = masks[keep]
    prompt_ids = [session.obj_id_to_prompt_id[obj_id] for obj_id in ids]
    confidence = torch.tensor([out.obj_id_to_tracker_score.get(obj_id, 0.0) for obj_id in ids])
    masks = _without_overlaps(masks, confidence, prompt_ids)
    scores = np.array([float(out.obj_id_to_score[obj_id]) for obj_id in ids])
    return (np.array(ids, dtype=np.int64), [session.prompts[p] for p in prompt_ids], scores, masks.cpu().numpy())


def _without_overlaps(masks: torch.Tensor, confidence: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """(n, H, W) bool masks where, among objects of one group, each pixel stays with the most
    confident object claiming it (the first on ties)."""
    result = masks.clone()
    group_ids = torch.tensor(groups)
    for group in group_ids.unique().tolist():
        members = torch.nonzero(group_ids == group).flatten()
        if len(members) < 2:
            continue
        claims = torch.where(masks[members], confidence[members, None, None], torch.tensor(-1.0))
        winner = claims.argmax(0)
        for rank, member in enumerate(members.tolist()):
            result[member] &= winner == rank
    return result


# ---- results out -------------------------------------------------------------------------

@dataclass
class TrackWriter:
    """Writes tracked frames into ``folder`` as they come: the overlay video (``video``),
    per-frame PNGs (``png``: DAVIS index masks and overlays), and at ``close`` the masklets in
    YouTube-VIS results form. Frames must come in order."""

    folder: Path
    length: int
    fps: float
    video: bool = True
    png: bool = False
    categories: list[str] = field(default_factory=list)
    _objects: dict[int, dict] = field(default_factory=dict)
    _encoder: object = None

    def __post_init__(self):
        self.folder = Path(self.folder)
        if self.video:
            require_pyav("writing the overlay video")
        if self.png:
            (self.folder / MASKS_DIR).mkdir(parents=True, exist_ok=True)
            (self.folder / OVERLAYS_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, frame: TrackedFrame) -> None:
        for obj_id, prompt, score, mask in zip(frame.object_ids.tolist(), frame.prompts, frame.scores.tolist(),
                                               frame.masks, strict=True):
            entry = self._objects.setdefault(obj_id, {"prompt": prompt, "segmentations": [None] * self.length,
                                                      "scores": [None] * self.length})
            if mask.any():
                entry["segmentations"][frame.index] = encode(mask)
                entry["scores"][frame.index] = score
        overlay = draw_tracked(frame) if self.video or self.png else None
        if self.video:
            self._encode(overlay)
        if self.png:
            write_png(index_mask(frame), self.folder / MASKS_DIR / f"{frame.name}.png")
            write_png(overlay, self.folder / OVERLAYS_DIR / f"{frame.name}.png")

    def _encode(self, image: Image.Image) -> None:
        if self._encoder is None:
            self._encoder = VideoEncoder(self.folder / OVERLAY_VIDEO, image.size, self.fps)
        self._encoder.write(image)

    def close(self) -> Path:
        """Finish the video and write ``masklets.json``; returns its path."""
        if self._encoder is not None:
            self._encoder.close()
        return write_file(self.folder / MASKLETS_FILE, json.dumps(self.masklets()))

    def masklets(self) -> list[dict]:
        """YouTube-VIS results: one entry per object (``video_id`` 1; ``category_id`` its
        prompt's place in ``categories`` + 1, as ``predict``'s COCO results number prompts;
        ``segmentations`` one RLE or null per frame; ``score`` the mean of its frames'), with
        ``object_id``, ``prompt`` and the per-frame ``scores`` besides."""
        results = []
        for obj_id, entry in sorted(self._objects.items()):
            seen = [s for s in entry["scores"] if s is not None]
            if not seen:
                continue
            if entry["prompt"] not in self.categories:
                self.categories.append(entry["prompt"])
            results.append({"video_id": 1, "object_id": obj_id, "category_id": self.categories.index(entry["prompt"]) + 1,
                            "prompt": entry["prompt"], "score": float(np.mean(seen)),
                            "segmentations": entry["segmentations"], "scores": entry["scores"]})
        return results


class VideoEncoder:
    """An H.264 (or MPEG-4) video written frame by frame with PyAV; sides cut to even numbers
    (yuv420p needs them)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float):
        av = require_pyav("writing the overlay video")
        self.size = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        self.container = av.open(str(path), "w")
        codec = next(name for name in VIDEO_CODECS if name in av.codecs_available)
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":   # x264's default (medium) took 70 ms a 480p frame on one core, veryfast 18
            self.stream.options = {"preset": X264_PRESET}

    def write(self, image: Image.Image) -> None:
        import av

        pixels = np.asarray(image)[: self.size[1], : self.size[0]]
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def draw_tracked(frame: TrackedFrame) -> Image.Image:
    """The frame with each object's mask tinted and outlined in its identity's colour. Only
    the box around each mask is drawn on (the whole 480p frame cost 38 ms an object)."""
    canvas = np.array(frame.image)
    line = max(1, min(frame.image.size) // 300)
    for obj_id, mask in zip(frame.object_ids.tolist(), frame.masks, strict=True):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        # one pixel of margin, so that the outline (the mask's border pixels) is found as over the whole frame
        box = np.s_[max(rows[0] - 1, 0): rows[-1] + 2, max(cols[0] - 1, 0): cols[-1] + 2]
        region = canvas[box].astype(np.float32)
        draw_masks(region, mask[box][None], prompt_color(obj_id), line)
        canvas[box] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(canvas)


def index_mask(frame: TrackedFrame) -> Image.Image:
    """DAVIS's result form: a palette PNG whose pixel values are object ids (0 background;
    where masks overlap, the higher id); 16-bit grey where an id passes 255."""
    height, width = frame.masks.shape[1:] if len(frame.masks) else (frame.image.height, frame.image.width)
    ids = np.zeros((height, width), dtype=np.int64)
    for obj_id, mask in sorted(zip(frame.object_ids.tolist(), frame.masks, strict=True), key=lambda x: x[0]):
        ids[mask] = obj_id
    if ids.max(initial=0) > 255:
        return Image.fromarray(ids.astype(np.uint16))
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette(davis_palette())   # grey values become palette indices: mode P
    return image
