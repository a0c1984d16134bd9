"""SAM3's other half: the tracker, which segments one object from clicks, a box or a mask.

``load_tracker(source)`` returns a ``Sam3TrackerModel`` with the processor that turns images
into its ``pixel_values`` (``model.task: interactive``). It takes every source
``model.source`` takes (``model.loading`` resolves them, with the same one-line errors):

- a preset (``sam3-tiny``, ``sam3-small``, ``sam3``): random weights, the tracker built
  from the preset detector's vision config (``tracker_config``).
- the bundled base ``sam3-tiny-shapes``: its own trained tracker (``tracker/`` in the
  bundled folder, ``configs/base-tracker.yaml``: the detector's ViT fine-tuned with new
  heads on the same shapes, clicks and boxes in; a folder of ``save_pretrained`` format).
- a ``save_pretrained`` folder: one holding a tracker config (``model_type`` ``sam3_tracker``)
  loads as it is; one holding a SAM3 detector (``sam3``) gives its ViT to a new tracker as
  the bundled base does.
- a hub id (``facebook/sam3``): transformers reads the tracker's weights from the full
  SAM3 checkpoint (``Sam3TrackerModel.from_pretrained``).

Model inputs (B objects, each with its own image row; K clicks; S the input size; m the
mask side, 4x the patch grid, ``S * 4 / 14``)::

    pixel_values   (B, 3, S, S)   normalised as for the detector (``model.processing``)
    input_points   (B, 1, K, 2)   x, y in pixels of the S x S input
    input_labels   (B, 1, K)      1 positive, 0 negative
    input_boxes    (B, 1, 4)      x1, y1, x2, y2 in pixels of the S x S input
    input_masks    (B, 1, m, m)   mask logits of a previous prediction (or a mask prompt)

Outputs: ``pred_masks`` (B, 1, M, m, m) logits, ``iou_scores`` (B, 1, M),
``object_score_logits`` (B, 1, 1), M = 3 with ``multimask_output`` else 1.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    PretrainedConfig,
    Sam3Config,
    Sam3Model,
    Sam3TrackerConfig,
    Sam3TrackerModel,
    Sam3TrackerVideoConfig,
)

from sam3_lora.errors import ModelLoadError
from sam3_lora.model.folders import check_finite_model, quiet_progress
from sam3_lora.model.loading import (
    BUNDLED,
    PRESETS,
    bundled_folder,
    load_pretrained,
    load_sam3,
    load_sam3_config,
    locate,
    seeded,
    set_image_size,
)
from sam3_lora.model.processing import Sam3InputProcessor

TRACKER_MODEL_TYPE = "sam3_tracker"
VIDEO_TRACKER_MODEL_TYPE = "sam3_tracker_video"
BUNDLED_TRACKER = "tracker"
"""The folder, inside a bundled base's, of the tracker trained with it."""
HEAD_WIDTH = 32
"""Width of one attention head of the tracker's mask decoder (SAM's: 256 / 8 heads)."""
MLP_RATIO = 8
"""The mask decoder's MLP width over its hidden width (SAM's: 2048 / 256)."""


@dataclass
class LoadedTracker:
    """A SAM3 tracker with what turns images into its inputs (``LoadedSam3``'s fields;
    the tracker reads no text, so ``tokenizer`` is None)."""

    model: Sam3TrackerModel
    processor: Sam3InputProcessor
    source: str

    @property
    def tokenizer(self):
        return None

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model so that ``load_tracker(folder)`` reads it back offline."""
        self.model.save_pretrained(folder)


def tracker_config(detector: Sam3Config, width: int | None = None) -> Sam3TrackerConfig:
    """A tracker on ``detector``'s vision config, its FPN neck, prompt encoder and mask decoder
    ``width`` wide (default: the detector's FPN width), with heads of ``HEAD_WIDTH`` and an MLP
    ``MLP_RATIO`` times wider (SAM3's width 256 gives transformers' default
    ``Sam3TrackerConfig``: 8 heads, MLP 2048)."""
    vision = copy.deepcopy(detector.vision_config)
    width = width or vision.fpn_hidden_size
    vision.fpn_hidden_size = width
    size = vision.backbone_config.image_size
    return Sam3TrackerConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config={"hidden_size": width, "image_size": size,
                               "patch_size": vision.backbone_config.patch_size},
        mask_decoder_config={"hidden_size": width, "mlp_dim": MLP_RATIO * width,
                             "num_attention_heads": max(1, width // HEAD_WIDTH), "iou_head_hidden_dim": width},
    )


def image_part(video: Sam3TrackerVideoConfig) -> Sam3TrackerConfig:
    """The image tracker inside the video tracker ``video`` (``model.video``): its vision
    encoder, prompt encoder and mask decoder, whose weights keep their names there."""
    return Sam3TrackerConfig(vision_config=video.vision_config.to_dict(),
                             prompt_encoder_config=video.prompt_encoder_config.to_dict(),
                             mask_decoder_config=video.mask_decoder_config.to_dict())


def set_tracker_image_size(config: Sam3TrackerConfig, image_size: int) -> Sam3TrackerConfig:
    """``loading.set_image_size`` for a tracker: the ViT, its feature maps and the prompt
    encoder (which turns pixel coordinates into positions) all follow."""
    set_image_size(config, image_size)
    config.prompt_encoder_config.image_size = image_size
    return config


def tracker_image_size(config: Sam3TrackerConfig) -> int:
    return config.vision_config.backbone_config.image_size


def load_tracker_config(source: str, revision: str | None = None, image_size: int | None = None,
                        token: str | None = None, width: int | None = None) -> Sam3TrackerConfig:
    """The tracker architecture of ``source`` without its weights; ``width`` is
    ``model.tracker_width``, for a tracker built new on a detector's ViT."""
    if source in PRESETS or _source_model_type(source, revision, token) == "sam3":
        config = tracker_config(load_sam3_config(source, revision, None, token), width)
    else:
        location, cache_only = _locate_tracker(source, revision, token)
        try:
            config = AutoConfig.from_pretrained(location, revision=revision, token=token, local_files_only=cache_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model.source {source!r}: config.json cannot be read ({type(exc).__name__}); "
                                 f"give a folder written by save_pretrained") from None
        # SAM3's full checkpoint (sam3_video) nests the tracker's config, as transformers reads it.
        config = getattr(config, "tracker_config", None) or config
        if config.model_type == VIDEO_TRACKER_MODEL_TYPE and _source_model_type(source, revision, token) == \
                VIDEO_TRACKER_MODEL_TYPE:   # a video tracker's folder: its image part, whose keys are the same
            config = image_part(config)
        if not isinstance(config, Sam3TrackerConfig):
            raise ModelLoadError(f"model.source {source!r}: config.json is a {config.model_type} config, not SAM3's "
                                 f"or its tracker's; give a SAM3 model (model.task=interactive)")
        own = config.mask_decoder_config.hidden_size
        if width not in (None, own):
            raise ModelLoadError(f"model.tracker_width={width}: model.source {source!r} is a tracker {own} wide, "
                                 f"and a trained tracker keeps its width; drop model.tracker_width")
    return set_tracker_image_size(config, image_size) if image_size else config


def load_tracker(source: str = "facebook/sam3", *, revision: str | None = None, image_size: int | None = None,
                 token: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                 width: int | None = None) -> LoadedTracker:
    """Load SAM3's tracker and its image processor from a preset, the bundled base, a local
    folder or a hub id (see the module docstring). Arguments as ``loading.load_sam3``;
    ``seed`` also fixes the random heads of a tracker built on a detector's ViT, and
    ``width`` (``model.tracker_width``) their width."""
    config = load_tracker_config(source, revision, image_size, token, width)
    if source in PRESETS:
        model = new_tracker(config, seed, dtype)
    elif _source_model_type(source, revision, token) == "sam3":
        model = _on_detector_vit(source, config, revision, token, seed, dtype)
    else:
        location, cache_only = _locate_tracker(source, revision, token)
        with quiet_progress() if source in BUNDLED else contextlib.nullcontext():
            # Never pickle (pytorch_model.bin): unpickling can run code (as loading.load_sam3).
            model = load_pretrained(Sam3TrackerModel, location, source, config=config, revision=revision,
                                    token=token, dtype=dtype, use_safetensors=True, local_files_only=cache_only)
        check_finite_model(model, source)
    processor = Sam3InputProcessor(tokenizer=None, image_size=tracker_image_size(config))
    return LoadedTracker(model=model.eval(), processor=processor, source=source)


def new_tracker(config: Sam3TrackerConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> Sam3TrackerModel:
    """A tracker with random weights (seeded) that can learn, with two changes to what
    transformers builds (both measured on the bundled base's shapes, BENCHMARKS.md "The
    bundled tracker"):

    The prompt encoder and mask decoder start from PyTorch's default initialisation, as SAM 2
    builds them (``training/``: plain ``nn.Linear`` / ``nn.Conv2d``). transformers draws
    every weight from N(0, 0.02), which at a small width shrinks the signal through each of
    the decoder's layers: the tiny tracker's first masks were constant to 1e-5, whatever the
    prompt, and it did not learn from them.

    A click or a box corner is encoded by random Fourier features of its position, and so is
    every position of the image; SAM matches them only if both use one basis (SAM's
    ``prompt_encoder.shared_embedding`` is the model's ``shared_image_embedding``, and SAM3's
    checkpoint holds the same matrix in both). transformers builds two independent random
    matrices, which are never trained (buffers): a tracker built that way learns to ignore
    where its prompt is (measured: first-click IoU under 0.1 after 1,000 steps on shapes).
    So the prompt encoder gets the image's basis here."""
    with seeded(seed):
        model = Sam3TrackerModel(config)
        for head in (model.prompt_encoder, model.mask_decoder):
            for module in head.modules():
                if module is not head and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    model = model.to(dtype)
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding)
    return model


def _on_detector_vit(source: str, config: Sam3TrackerConfig, revision: str | None, token: str | None,
                     seed: int, dtype: torch.dtype) -> Sam3TrackerModel:
    """A tracker with random heads (seeded) and the ViT of the SAM3 detector at ``source``;
    the detector's FPN neck too where it is as wide as the tracker."""
    detector: Sam3Model = load_sam3(source, revision=revision, image_size=tracker_image_size(config),
                                    token=token, dtype=dtype).model
    model = new_tracker(config, seed, dtype)
    # Same module, same keys (Sam3VisionModel in both): the whole ViT and FPN neck carry over,
    # or the ViT alone under a neck of another width (model.tracker_width), which starts new.
    if detector.config.vision_config.fpn_hidden_size == config.vision_config.fpn_hidden_size:
        model.vision_encoder.load_state_dict(detector.vision_encoder.state_dict())
    else:
        model.vision_encoder.backbone.load_state_dict(detector.vision_encoder.backbone.state_dict())
    return model


def _locate_tracker(source: str, revision: str | None, token: str | None) -> tuple[str, bool]:
    """``loading.locate`` for the tracker: a bundled base's trained tracker (``BUNDLED_TRACKER``)
    in place of its detector."""
    if source not in BUNDLED:
        return locate(source, revision, token)
    folder = Path(bundled_folder(source)) / BUNDLED_TRACKER
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"model.source {source!r}: the bundled tracker's weights are missing from {folder}; "
                             f"reinstall sam3-lora (pip install -e .)")
    return str(folder), False


def _source_model_type(source: str, revision: str | None, token: str | None) -> str | None:
    """``model_type`` in the config.json of a folder or hub source (None for presets)."""
    if source in PRESETS:
        return None
    location, cache_only = _locate_tracker(source, revision, token)
    with quiet_progress() if source in BUNDLED else contextlib.nullcontext():
        try:
            raw, _ = PretrainedConfig.get_config_dict(location, revision=revision, token=token,
                                                      local_files_only=cache_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model.source {source!r}: its config.json cannot be read ({type(exc).__name__}); "
                                 f"give a folder written by save_pretrained") from None
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise ModelLoadError(f"model.source {source!r}: config.json has no model_type; give a folder written by "
                             f"save_pretrained from a SAM3 or SAM3 tracker model")
    return model_type


def image_embeddings(model, vision) -> list[torch.Tensor]:
    """The tracker's ``image_embeddings`` from its vision encoder's output ``vision``
    (``model.forward.encode_images``, or a feature cache's entry), equal to what
    ``Sam3TrackerModel`` computes after its vision encoder: the mask decoder's projections of
    the two high-resolution FPN levels (trained weights of the heads, so a cache keeps the
    encoder's output and this runs at every step), and the third level as it is.

    transformers (5.23) adds the "no memory" embedding to the *last* level the encoder
    returns; SAM3's encoder returns four (scale factors 4, 2, 1, 0.5) and the tracker reads
    the first three, so the embedding reaches nothing it reads (Meta's SAM 3 adds it to the
    1x level). Left out here, as it is in effect there.

    vision.fpn_hidden_states: (B, C, 4g, 4g), (B, C, 2g, 2g), (B, C, g, g), ..., g the patch
    grid -> [(B, C/8, 4g, 4g), (B, C/4, 2g, 2g), (B, C, g, g)].
    """
    high, middle, low = vision.fpn_hidden_states[:3]
    return [model.mask_decoder.conv_s0(high), model.mask_decoder.conv_s1(middle), low]


class ObjectPredictor:
    """Segments one object of one image from prompts that grow, as a user clicks (SAM's
    interactive use, and ``evaluation.interactive``'s ``predict``).

    The image is encoded once (the first call); each call takes every click so far and
    feeds the previous call's mask logits back as the mask input, as training's correction
    rounds do. A single click alone gives three masks, of which the one with the highest
    predicted IoU is kept (SAM). ``reset()`` starts a new object on the same image.
    Coordinates are pixels of the original (H, W) image; the image was resized directly to
    the model's S x S (``processor.images``), so they scale by S / W and S / H.
    """

    def __init__(self, model, pixel_values: torch.Tensor, image_size: tuple[int, int]):
        self.model, self.pixel_values = model, pixel_values
        self.height, self.width = image_size
        self.embeddings = None
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None   # (1, 1, m, m) logits of the last prediction

    @torch.no_grad()
    def __call__(self, points=None, labels=None, box=None) -> torch.Tensor:
        """points (K, 2) x, y and labels (K,) 1 / 0, and/or box (4,) x1, y1, x2, y2, all in
        original pixels -> (H, W) bool mask."""
        side = self.pixel_values.shape[-1]
        scale = torch.tensor([side / self.width, side / self.height])
        prompt = {}
        if points is not None and len(points):
            prompt["input_points"] = (torch.as_tensor(points, dtype=torch.float) * scale)[None, None]
            prompt["input_labels"] = torch.as_tensor(labels, dtype=torch.long)[None, None]
        if box is not None:
            prompt["input_boxes"] = (torch.as_tensor(box, dtype=torch.float) * scale.repeat(2))[None, None]
        device = self.pixel_values.device
        prompt = {k: v.to(device) for k, v in prompt.items()}
        clicks = 0 if points is None else len(points)
        single_click = box is None and clicks == 1 and self.previous is None
        source = ({"pixel_values": self.pixel_values} if self.embeddings is None
                  else {"image_embeddings": self.embeddings})
        out = self.model(**source, **prompt, input_masks=self.previous, multimask_output=single_click)
        self.embeddings = out.image_embeddings
        masks, scores = out.pred_masks[0, 0], out.iou_scores[0, 0]   # (M, m, m), (M,)
        self.previous = masks[int(scores.argmax())][None, None].float()
        full = torch.nn.functional.interpolate(self.previous, size=(self.height, self.width), mode="bilinear")
        return full[0, 0].cpu() > 0
