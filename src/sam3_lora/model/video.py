"""SAM3 on video: the video tracker (``Sam3TrackerVideoModel``: clicks, a box or a mask on one
frame, that object through the video) and the concept model (``Sam3VideoModel``: a phrase in,
every instance out as a masklet with an identity).

``load_video_tracker(source)`` takes every source ``model.source`` takes:

- a folder or hub id holding a video tracker (``model_type`` ``sam3_tracker_video``) or SAM3's
  whole video checkpoint (``sam3_video``, as ``facebook/sam3``: transformers reads the
  tracker's part, its ViT from the detector's): loaded as it is.
- anything ``model.tracker.load_tracker`` reads (presets, the bundled base, an image-tracker
  folder, a detector folder): that image tracker, with a memory (memory attention, memory
  encoder, object pointers) that is new and random until trained (``model.task: video``).
  The image tracker's weights are a subset of the video tracker's, key for key and shape for
  shape, so they carry over whole, and on the frame it is prompted on (no memory yet) the
  video tracker answers as the image tracker does.

The video tracker splits each object pointer into ``MEMORY_WIDTH``-wide memory tokens, so
its width (the prompt encoder's and mask decoder's) must be a multiple of it and above it:
widths 32 and 64 fail inside transformers (``_prepare_memory_conditioned_features``), and
are refused here in one line before anything loads. The tiny presets and the bundled base
are 32 wide.

``load_video_model(source)`` gives the concept model: SAM3's detector from ``source``
(``load_sam3``) and, unless ``source`` is a whole video checkpoint, a new tracker as wide as
the detector's FPN (inside ``Sam3VideoModel`` the tracker reads the detector's ViT through a
neck of its own, built from the detector's vision config; it starts here as a copy of the
detector's neck).

``fit_session`` keeps a transformers inference session bounded on long videos: what the
tracker reads back is the last ``num_maskmem`` frames' memories and up to
``max_object_pointers_in_encoder`` frames' object pointers, and everything older is dropped.
``track_from_masks`` runs a session from ground-truth masks on one frame (DAVIS's
semi-supervised protocol; ``validate`` on a video split), ``object_logits`` reads one frame's
answer at the video's size (``track`` thresholds it). ``install_postprocessing_fallback``
gives ``Sam3VideoModel`` its NMS and hole filling where the ``kernels`` package (which
downloads its CUDA kernels from the hub) is absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from transformers import (
    AutoConfig,
    AutoTokenizer,
    Sam3Config,
    Sam3Model,
    Sam3TrackerConfig,
    Sam3TrackerModel,
    Sam3TrackerVideoConfig,
    Sam3TrackerVideoModel,
    Sam3VideoConfig,
    Sam3VideoModel,
)

from sam3_lora.errors import ModelLoadError, Sam3LoraWarning
from sam3_lora.model.folders import check_finite_model, quiet_progress
from sam3_lora.model.loading import (
    BUNDLED,
    PRESETS,
    LoadedSam3,
    bundled_folder,
    load_pretrained,
    load_sam3,
    load_sam3_config,
    locate,
    seeded,
    set_image_size,
)
from sam3_lora.model.processing import Sam3InputProcessor
from sam3_lora.model.tokenizer import build_byte_tokenizer
from sam3_lora.model.tracker import (
    MLP_RATIO,
    VIDEO_TRACKER_MODEL_TYPE,
    LoadedTracker,
    _source_model_type,
    load_tracker,
    load_tracker_config,
    new_tracker,
    tracker_config,
)

VIDEO_MODEL_TYPE = "sam3_video"
VIDEO_MODEL_TYPES = (VIDEO_TRACKER_MODEL_TYPE, VIDEO_MODEL_TYPE)
OFFLOADED = {"inference_state_device": "cpu", "video_storage_device": "cpu"}
"""Where transformers' sessions keep frames and the tracking state (memories, masks, cached
features): in CPU memory, moved to the model's device when read (SAM 2's offloading; the
same place on a CPU). Not run on a GPU here yet."""
MEMORY_WIDTH = 64
"""The video tracker's memory channels (``memory_encoder_output_channels``, SAM 2's 64): an
object pointer as wide as the tracker is split into tokens this wide."""
FUSER_RATIO = 4
"""The memory fuser's MLP width over the tracker's width (SAM 2's: 1024 / 256)."""
BUNDLED_VIDEO_TRACKER = "video-tracker"
"""The folder, inside a bundled base's, of its video tracker: its image tracker (``tracker/``)
with a memory trained on clips and the mask decoder trained with it (decoding frames that have
no prompt, from memory, changed it: the image tracker keeps its own). Without it, a bundled
base's video tracker is its image tracker with a new, random memory."""
IMAGE_TRACKER_MODULES = ("shared_image_embedding", "vision_encoder", "prompt_encoder", "mask_decoder",
                         "no_memory_embedding")
"""What ``Sam3TrackerModel`` is made of: the same modules, under the same names, in
``Sam3TrackerVideoModel`` (which adds the memory)."""


@dataclass
class LoadedVideoTracker(LoadedTracker):
    """``LoadedTracker`` holding SAM3's video tracker (``load_video_tracker`` reads back what
    its ``save_pretrained`` writes)."""

    model: Sam3TrackerVideoModel


@dataclass
class LoadedVideoModel(LoadedSam3):
    """``LoadedSam3`` holding SAM3's concept video model, with its detector's processor
    (``load_video_model`` reads back what its ``save_pretrained`` writes)."""

    model: Sam3VideoModel


def tracker_width(config: Sam3TrackerConfig | Sam3TrackerVideoConfig) -> int:
    """The width of a tracker's prompt encoder and mask decoder (SAM3's: 256)."""
    return config.mask_decoder_config.hidden_size


def check_video_width(width: int, source: str) -> None:
    """Refuse, in one line, a tracker too narrow or of the wrong width for video."""
    if width <= MEMORY_WIDTH or width % MEMORY_WIDTH:
        raise ModelLoadError(
            f"model.source {source!r}: its tracker is {width} wide, and the video tracker needs a width that is a "
            f"multiple of {MEMORY_WIDTH} and above it (object pointers are split into {MEMORY_WIDTH}-wide memory "
            f"tokens); give a SAM3 with a wider tracker (facebook/sam3: 256), or build a new one on this ViT with "
            f"model.tracker_width=128")


def video_tracker_config(tracker: Sam3TrackerConfig) -> Sam3TrackerVideoConfig:
    """The video tracker around the image tracker ``tracker``: the same vision encoder, prompt
    encoder and mask decoder, and a memory as wide as they are, in SAM 2's proportions (SAM3's
    width 256 gives transformers' default ``Sam3TrackerVideoConfig``: memory attention 256
    wide with an MLP of 2048, memory fuser MLP 1024, 64 memory channels)."""
    width = tracker_width(tracker)
    return Sam3TrackerVideoConfig(
        vision_config=tracker.vision_config.to_dict(),
        prompt_encoder_config=tracker.prompt_encoder_config.to_dict(),
        mask_decoder_config=tracker.mask_decoder_config.to_dict(),
        # Not left out: transformers sets every size from image_size, 1008 when it is not given.
        image_size=tracker.vision_config.backbone_config.image_size,
        memory_attention_hidden_size=width, memory_attention_feed_forward_hidden_size=MLP_RATIO * width,
        memory_encoder_hidden_size=width, memory_encoder_output_channels=MEMORY_WIDTH,
        mask_downsampler_embed_dim=width, memory_fuser_embed_dim=width,
        memory_fuser_intermediate_dim=FUSER_RATIO * width,
    )


def set_video_image_size(config: Sam3TrackerVideoConfig, image_size: int) -> Sam3TrackerVideoConfig:
    """``loading.set_image_size`` for the video tracker (checked the same way): transformers'
    setter moves the ViT, its feature maps, the prompt encoder and the memory's rotary grid."""
    set_image_size(config, image_size)   # its check: a multiple of the patch size
    config.image_size = image_size
    return config


def load_video_tracker_config(source: str, revision: str | None = None, image_size: int | None = None,
                              token: str | None = None, width: int | None = None) -> Sam3TrackerVideoConfig:
    """The video tracker architecture of ``source`` without its weights, its width checked;
    ``width``: ``model.tracker_width``, for a tracker built new on a detector's ViT."""
    if _video_type(source, revision, token) is not None:
        config = _read_video_config(source, revision, token)
        config = getattr(config, "tracker_config", None) or config
    else:
        tracker = load_tracker_config(source, revision, None, token, width)
        check_video_width(tracker_width(tracker), source)
        config = video_tracker_config(tracker)
    check_video_width(tracker_width(config), source)
    return set_video_image_size(config, image_size) if image_size else config


def check_video_source(source: str, concept: bool, revision: str | None = None, token: str | None = None,
                       width: int | None = None) -> None:
    """Refuse, from its config alone (no weights), a ``source`` whose tracker cannot run on
    video (``check_video_width``): for ``concept``, the concept model's (as wide as the
    detector's FPN unless ``source`` is a whole video checkpoint), else the video tracker's
    (``width``: ``model.tracker_width``)."""
    if not concept:
        load_video_tracker_config(source, revision, None, token, width)
    elif _video_type(source, revision, token) == VIDEO_MODEL_TYPE:
        check_video_width(tracker_width(_read_video_config(source, revision, token).tracker_config), source)
    else:
        check_video_width(load_sam3_config(source, revision, None, token).vision_config.fpn_hidden_size, source)


def load_video_tracker(source: str = "facebook/sam3", *, revision: str | None = None, image_size: int | None = None,
                       token: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                       width: int | None = None) -> LoadedVideoTracker:
    """Load SAM3's video tracker and its frame processor from any ``model.source`` (the module
    docstring says what each gives). Arguments as ``model.tracker.load_tracker``; ``seed``
    also fixes a new memory's random weights."""
    config = load_video_tracker_config(source, revision, image_size, token, width)   # the width, before any weight
    if _video_type(source, revision, token) is not None:
        location, cache_only = _locate_video(source, revision, token)
        # Never pickle (pytorch_model.bin): unpickling can run code (as loading.load_sam3).
        model = load_pretrained(Sam3TrackerVideoModel, location, source, config=config, revision=revision,
                                token=token, dtype=dtype, use_safetensors=True, local_files_only=cache_only)
        check_finite_model(model, source)
    else:
        image = load_tracker(source, revision=revision, image_size=image_size, token=token, seed=seed, dtype=dtype,
                             width=width)
        warnings.warn(Sam3LoraWarning(
            f"model.source {source!r} holds no video memory (it is an image tracker or a detector): the video "
            f"tracker's memory is new and random, so it follows objects only once trained (model.task=video)"),
            stacklevel=2)
        model = video_tracker_on(image.model, config, seed, dtype)
    processor = Sam3InputProcessor(tokenizer=None, image_size=config.image_size)
    return LoadedVideoTracker(model=model.eval(), processor=processor, source=source)


def video_tracker_on(image: Sam3TrackerModel, config: Sam3TrackerVideoConfig | None = None, seed: int = 0,
                     dtype: torch.dtype = torch.float32, vision: bool = True) -> Sam3TrackerVideoModel:
    """A video tracker holding ``image``'s weights (copied) and a new memory (seeded);
    ``vision=False``: without a vision encoder (``Sam3VideoModel``'s tracker reads the
    detector's)."""
    config = config or video_tracker_config(image.config)
    with seeded(seed):
        model = Sam3TrackerVideoModel(config, remove_vision_encoder=not vision).to(dtype)
    weights = {key: value for key, value in image.state_dict().items()
               if vision or not key.startswith("vision_encoder.")}
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:   # transformers renamed a module: say so rather than track with random heads
        raise ModelLoadError(f"the image tracker's weights {unexpected[:3]} have no place in the video tracker "
                             f"(transformers changed its module names); use transformers 5.23")
    return model


def share_image_tracker(video: Sam3TrackerVideoModel, image: Sam3TrackerModel) -> Sam3TrackerVideoModel:
    """``video`` with ``image``'s modules in place of its own (the same objects, not copies):
    an adapter put on ``image`` (``lora.adapter.load_adapter``, which PEFT injects into those
    modules) then acts in the video tracker too, and switching it off switches it off in both.
    ``image`` may be wrapped by PEFT; its base model's modules are taken."""
    base = image.get_base_model() if hasattr(image, "get_base_model") else image
    for name in IMAGE_TRACKER_MODULES:
        mine, theirs = getattr(video, name), getattr(base, name)
        if isinstance(mine, torch.nn.Parameter) and mine.shape != theirs.shape:
            raise ModelLoadError(f"the image tracker's {name} {tuple(theirs.shape)} does not fit the video tracker's "
                                 f"{tuple(mine.shape)}; load both from one model.source")
        setattr(video, name, theirs)
    return video


# ---- the concept model ------------------------------------------------------------------

def load_video_model(source: str = "facebook/sam3", *, revision: str | None = None, image_size: int | None = None,
                     token: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                     detector: Sam3Model | None = None) -> LoadedVideoModel:
    """Load SAM3's concept video model (``Sam3VideoModel``) and its processor. ``detector``:
    a detector already loaded from ``source`` (with an adapter, as ``SAM3LoRAInference``
    holds it) to use in place of a second copy; a PEFT-wrapped one is used through its
    base model, whose layers carry the adapter."""
    if detector is not None:
        detector = detector.get_base_model() if hasattr(detector, "get_base_model") else detector
    if _video_type(source, revision, token) == VIDEO_MODEL_TYPE:
        model, tokenizer = _whole_video_model(source, revision, image_size, token, dtype)
        if detector is not None:
            model.detector_model = detector
    else:
        loaded = load_sam3(source, revision=revision, image_size=image_size, token=token, seed=seed, dtype=dtype) \
            if detector is None else None
        detector = detector if detector is not None else loaded.model
        model = video_model_on(detector, source, seed, dtype)
        tokenizer = loaded.tokenizer if loaded is not None else _tokenizer_of(source, detector.config, revision, token)
    config = model.config.detector_config
    processor = Sam3InputProcessor(tokenizer=tokenizer, image_size=config.vision_config.backbone_config.image_size,
                                   max_text_length=config.text_config.max_position_embeddings)
    return LoadedVideoModel(model=model.eval(), processor=processor, source=source)


def video_model_on(detector: Sam3Model, source: str, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> Sam3VideoModel:
    """``Sam3VideoModel`` around ``detector`` (the same object) with a new tracker as wide as
    its FPN: the image tracker's heads as ``new_tracker`` starts them, a new memory, and a
    neck that starts as a copy of the detector's."""
    check_video_width(detector.config.vision_config.fpn_hidden_size, source)
    tracker = tracker_config(detector.config)
    config = Sam3VideoConfig(detector_config=detector.config.to_dict(),
                             tracker_config=video_tracker_config(tracker).to_dict())
    with torch.device("meta"):   # the detector is replaced at once: never allocate a second one
        model = Sam3VideoModel(config)
    model.detector_model = detector
    model.tracker_model = video_tracker_on(new_tracker(tracker, seed, dtype), None, seed, dtype, vision=False)
    model.tracker_neck = _neck_copy(detector, dtype)
    warnings.warn(Sam3LoraWarning(
        f"model.source {source!r} is a detector alone: the video model's tracker is new and random, so masklets "
        f"follow objects only once it is trained; detections on each frame are the detector's"), stacklevel=3)
    return model


def _neck_copy(detector: Sam3Model, dtype: torch.dtype) -> torch.nn.Module:
    from transformers.models.sam3.modeling_sam3 import Sam3VisionNeck

    neck = Sam3VisionNeck(detector.config.vision_config).to(dtype)
    neck.load_state_dict(detector.vision_encoder.neck.state_dict())
    return neck


def _whole_video_model(source: str, revision: str | None, image_size: int | None, token: str | None,
                       dtype: torch.dtype) -> tuple[Sam3VideoModel, object]:
    location, cache_only = locate(source, revision, token)
    config = _read_video_config(source, revision, token)
    check_video_width(tracker_width(config.tracker_config), source)
    if image_size:
        set_image_size(config.detector_config, image_size)
        set_video_image_size(config.tracker_config, image_size)
    hub = {"revision": revision, "token": token, "local_files_only": cache_only}
    model = load_pretrained(Sam3VideoModel, location, source, config=config, dtype=dtype, use_safetensors=True, **hub)
    check_finite_model(model, source)
    return model, load_pretrained(AutoTokenizer, location, source, **hub)


def _tokenizer_of(source: str, config: Sam3Config, revision: str | None, token: str | None):
    """The tokenizer ``load_sam3(source)`` gives (``config`` its model's), without loading the
    model again."""
    if source in PRESETS:
        return build_byte_tokenizer(config.text_config.max_position_embeddings)
    location, cache_only = locate(source, revision, token)
    return load_pretrained(AutoTokenizer, location, source, revision=revision, token=token,
                           local_files_only=cache_only)


def _video_type(source: str, revision: str | None, token: str | None) -> str | None:
    """``sam3_video`` or ``sam3_tracker_video`` for a source holding a video model, else None."""
    if source in PRESETS:
        return None
    if source in BUNDLED:
        return VIDEO_TRACKER_MODEL_TYPE if _bundled_video_tracker(source) else None
    model_type = _source_model_type(source, revision, token)
    return model_type if model_type in VIDEO_MODEL_TYPES else None


def _bundled_video_tracker(source: str) -> str | None:
    """The folder of a bundled base's video tracker (``BUNDLED_VIDEO_TRACKER``); None when
    ``source`` is no bundled base or has none."""
    if source not in BUNDLED:
        return None
    folder = Path(bundled_folder(source)) / BUNDLED_VIDEO_TRACKER
    return str(folder) if (folder / "model.safetensors").is_file() else None


def _locate_video(source: str, revision: str | None, token: str | None) -> tuple[str, bool]:
    """``loading.locate`` for a source holding a video model: a bundled base's video tracker
    in place of its detector."""
    bundled = _bundled_video_tracker(source)
    return (bundled, False) if bundled else locate(source, revision, token)


def _read_video_config(source: str, revision: str | None, token: str | None):
    location, cache_only = _locate_video(source, revision, token)
    with quiet_progress():
        try:
            return AutoConfig.from_pretrained(location, revision=revision, token=token, local_files_only=cache_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model.source {source!r}: config.json cannot be read ({type(exc).__name__}); "
                                 f"give a folder written by save_pretrained") from None


# ---- sessions ---------------------------------------------------------------------------

def memory_window(config: Sam3TrackerVideoConfig) -> int:
    """How many frames back the tracker reads (memories of ``num_maskmem - 1`` frames, object
    pointers of ``max_object_pointers_in_encoder - 1``): older outputs are never read again
    while tracking goes one way."""
    return max(config.num_maskmem, config.max_object_pointers_in_encoder)


def fit_session(session, frame_idx: int, window: int, reverse: bool = False, keep_conditioning: int = 4) -> None:
    """Drop from a transformers video session (tracker's or concept model's) what tracking in
    one direction, now at ``frame_idx``, never reads again: per object, the outputs of frames
    more than ``window`` frames behind, and the memory features of conditioning frames as far
    behind that are not among the ``keep_conditioning`` (``max_cond_frame_num``) closest
    (their object pointers, a few hundred bytes each, are kept: the tracker reads every one);
    the concept model's per-frame bookkeeping of frames as old. Memory then stays bounded
    however long the video (transformers keeps every frame's otherwise)."""
    def behind(index: int, by: int) -> bool:
        return index > frame_idx + by if reverse else index < frame_idx - by

    for outputs in session.output_dict_per_obj.values():
        for index in [index for index in outputs["non_cond_frame_outputs"] if behind(index, window)]:
            del outputs["non_cond_frame_outputs"][index]
        conditioning = outputs["cond_frame_outputs"]
        closest = sorted((i for i in conditioning if behind(i, 0)), key=lambda i: abs(i - frame_idx))
        for index in [i for i in closest[keep_conditioning:] if behind(i, window)]:
            entry = conditioning[index]
            for key in [key for key in entry if key not in ("object_pointer", "object_score_logits")]:
                del entry[key]
    for tracked in session.frames_tracked_per_obj.values():
        for index in [index for index in tracked if behind(index, window)]:
            del tracked[index]
    for per_frame in (getattr(session, "obj_id_to_tracker_score_frame_wise", None),
                      getattr(session, "suppressed_obj_ids", None)):
        for index in [index for index in per_frame or {} if behind(index, window)]:
            del per_frame[index]


def tracker_session(model: Sam3TrackerVideoModel, size: tuple[int, int], frames: Mapping | None = None):
    """A transformers session of the video tracker ``model`` on a video of ``size`` (W, H),
    its state ``OFFLOADED``; ``frames``: its ``processed_frames`` (index -> (3, S, S) pixel
    values, read as the model asks for them), or set later."""
    from transformers import Sam3TrackerVideoInferenceSession

    parameter = next(model.parameters())
    session = Sam3TrackerVideoInferenceSession(video_height=size[1], video_width=size[0],
                                               inference_device=parameter.device, dtype=parameter.dtype, **OFFLOADED)
    session.processed_frames = frames
    return session


def object_logits(out, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The video tracker's output on one frame -> object ids (n,), the probability each is
    there (n,), mask logits (n, H, W) float32 at the video's ``size`` (W, H): the
    low-resolution logits resized bilinearly, as ``segment`` resizes them (> 0 is the mask;
    an object judged absent has logits of -1024)."""
    logits = F.interpolate(out.pred_masks.float(), size=(size[1], size[0]), mode="bilinear")[:, 0]
    scores = torch.sigmoid(out.object_score_logits.float().reshape(-1))
    return np.array(out.object_ids, dtype=np.int64), scores.cpu().numpy(), logits.cpu()


@torch.inference_mode()
def track_from_masks(model: Sam3TrackerVideoModel, frames: Mapping, size: tuple[int, int],
                     masks: Mapping[int, torch.Tensor], start: int) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """Objects prompted by their masks on frame ``start`` and tracked forward to the last
    frame: yields (frame index, object ids (n,), mask logits (n, H, W) at ``size`` (W, H))
    for frames ``start`` .. end. ``masks``: object id -> (S, S) bool mask on the model's
    input (the session takes it as transformers' processor gives it; a mask prompt is the
    prompted frame's answer, as SAM 2's ``use_mask_input_as_output_without_sam``);
    ``frames``: index -> (3, S, S) pixel values. The session is trimmed as ``track``'s is
    (``fit_session``)."""
    session = tracker_session(model, size, frames)
    for object_id, mask in masks.items():
        session.add_mask_inputs(session.obj_id_to_idx(object_id), start, mask.float()[None, None])
    session.obj_with_new_inputs = list(masks)
    window = memory_window(model.config)
    for out in model.propagate_in_video_iterator(session, start_frame_idx=start):
        ids, _, logits = object_logits(out, size)
        fit_session(session, out.frame_idx, window)
        yield out.frame_idx, ids, logits


# ---- post-processing without the kernels package -----------------------------------------

class TorchCvUtils:
    """What ``Sam3VideoModel`` asks of the ``kernels-community/cv-utils`` kernel, on the CPU:
    greedy NMS over a precomputed IoU matrix, and 8-connected components with each pixel's
    component area. transformers skips NMS and hole filling without the kernel (duplicate
    masklets, holes); this keeps both, at CPU speed."""

    @staticmethod
    def generic_nms(ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                    use_iou_matrix: bool = True) -> torch.Tensor:
        """ious (n, n), scores (n,) -> indices (into scores) kept, best first: each detection
        is dropped when its IoU with a kept, better one exceeds ``iou_threshold``."""
        kept: list[int] = []
        for index in torch.argsort(scores, descending=True).tolist():
            if all(float(ious[index, other]) <= iou_threshold for other in kept):
                kept.append(index)
        return torch.tensor(kept, dtype=torch.long, device=scores.device)

    @staticmethod
    def cc_2d(mask: torch.Tensor, get_counts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """mask (N, 1, H, W) uint8 -> (labels, counts), both (N, 1, H, W) int32: each set
        pixel's component (8-connected, numbered from 1) and that component's area; 0 on
        unset pixels."""
        array = mask.detach().cpu().numpy().astype(bool)
        labels = np.zeros(array.shape, dtype=np.int32)
        counts = np.zeros(array.shape, dtype=np.int32)
        for index in np.ndindex(*array.shape[:2]):
            found, _ = ndimage.label(array[index], structure=np.ones((3, 3), dtype=int))
            labels[index] = found
            areas = np.bincount(found.ravel())
            areas[0] = 0
            counts[index] = areas[found]
        return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


def install_postprocessing_fallback() -> bool:
    """Give ``Sam3VideoModel`` ``TorchCvUtils`` where the ``kernels`` package is not installed
    (then transformers would skip NMS and hole filling, with a warning). With ``kernels``,
    transformers loads its kernel (from the hub, or its cache) as it always does. Returns
    whether the fallback is in place."""
    from transformers.models.sam3_video import modeling_sam3_video as video
    from transformers.utils import is_kernels_available

    if isinstance(video.cv_utils_kernel, TorchCvUtils):
        return True
    if is_kernels_available() and video.cv_utils_kernel is not False:
        return False
    video.cv_utils_kernel = TorchCvUtils()
    return True
