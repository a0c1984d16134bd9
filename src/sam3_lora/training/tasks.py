"""What the one training loop does with a batch, for each ``model.task``: the seam between them.

The trainer (``recipes.train``) owns everything both tasks share: accelerator, precision,
optimiser and schedule, accumulation, non-finite steps, evaluation cadence, checkpoints,
resume, best/ and last/. A ``Task`` owns what differs::

    loader(split, train, epoch)   the split's batches
    wrap(model)                   the module the accelerator prepares (one forward for DDP)
    inputs(batch, device)         a batch -> the model's inputs and the loss's targets
    forward(model, inputs)        the wrapped model's outputs (run under autocast)
    loss(outputs, inputs)         the loss terms and their weighted sum ``"loss"``

``ConceptTask`` is the detector's (SAM3's concept prompts, ``Sam3Criterion``);
``InteractiveTask`` the tracker's: SAM 2's interactive training, in which every batch is
predicted ``1 + training.correction_rounds`` times, each round adding a correction click
drawn from the previous round's errors (``data.prompts``), every round supervised by
``TrackerCriterion``; ``VideoTask`` the video tracker's: SAM 2's clip training
(``training.video_forward.ClipTracking``: frame 0 prompted, later frames through memory,
correction clicks on a few frames), ``TrackerCriterion`` summed over every frame.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.config import Config
from sam3_lora.data.collate import build_dataloader, mask_size_for
from sam3_lora.data.dataset import ConceptDataset
from sam3_lora.data.interactive import ObjectDataset, build_object_loader
from sam3_lora.data.prompts import PROB_FROM_GT, PromptKind, append_clicks, correction_clicks
from sam3_lora.data.records import CocoSplit
from sam3_lora.data.video.clips import build_clip_loader, long_enough
from sam3_lora.data.video.layout import VideoSplit, load_video_split
from sam3_lora.errors import DataError
from sam3_lora.loss.criterion import build_criterion
from sam3_lora.loss.tracker import TrackerCriterion
from sam3_lora.model.forward import QueryModel, as_float32
from sam3_lora.model.tracker import image_embeddings
from sam3_lora.training.features import with_image_keys
from sam3_lora.training.video_forward import ClipTracking

VisionFeatures = Callable[[torch.Tensor, list[str]], Any]
"""(pixel_values (B, 3, S, S), their image keys) -> the vision encoder's output for them."""


class Task(Protocol):
    """One ``model.task``: what turns a batch into a loss (see the module docstring)."""

    def num_samples(self, split: CocoSplit) -> int: ...
    def prompts(self, splits: dict[str, CocoSplit]) -> list[str]: ...
    def loader(self, split: CocoSplit, train: bool, epoch: int) -> DataLoader: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def inputs(self, batch: dict, device: torch.device) -> dict: ...
    def forward(self, model: nn.Module, inputs: dict) -> Any: ...
    def loss(self, outputs: Any, inputs: dict) -> dict[str, torch.Tensor]: ...
    def batch_record(self, batch: dict) -> dict: ...


def build_task(config: Config, image_size: int, tokenize=None, vision_features: VisionFeatures | None = None) -> Task:
    """The task ``config.model.task`` names. The concept task's ``tokenize``: prompts ->
    (input_ids, attention_mask), the model's processor's ``text``; ``vision_features``: where
    its images' vision features come from when they are cached (``data.cache_features``)."""
    if config.model.task == "interactive":
        return InteractiveTask(config, image_size, vision_features)
    if config.model.task == "video":
        return VideoTask(config, image_size)
    return ConceptTask(config, image_size, tokenize, vision_features)


class ConceptTask:
    """SAM3's detector: images with concept queries, ``Sam3Criterion``. With
    ``vision_features`` (a feature cache's ``encode``), batches carry their images' keys and
    the vision encoder's output is looked up instead of computed."""

    def __init__(self, config: Config, image_size: int, tokenize, vision_features: VisionFeatures | None = None):
        self.config, self.image_size, self.tokenize = config, image_size, tokenize
        self.vision_features = vision_features
        self.criterion = build_criterion(config.loss)
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def num_samples(self, split: CocoSplit) -> int:
        return len(split.images)

    def prompts(self, splits: dict[str, CocoSplit]) -> list[str]:
        """Every prompt the splits ask (what an adapter records)."""
        return sorted({prompt for name, split in splits.items() for prompt in
                       ConceptDataset(split, self.config.data, self.image_size, train=name == "train")
                       .prompt_vocabulary()})

    def loader(self, split: CocoSplit, train: bool, epoch: int) -> DataLoader:
        cfg = self.config.training
        loader = build_dataloader(split, self.config.data, self.image_size, cfg.batch_size, train=train,
                                  seed=cfg.seed, epoch=epoch)
        return with_image_keys(loader) if self.vision_features else loader

    def wrap(self, model: nn.Module) -> nn.Module:
        return QueryModel(model)

    def inputs(self, batch: dict, device: torch.device) -> dict:
        input_ids, attention_mask = self._tokens(batch["prompts"], device)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["targets"]]
        return {"pixel_values": batch["pixel_values"], "image_index": batch["query_image_index"],
                "input_ids": input_ids, "attention_mask": attention_mask, "targets": targets,
                "image_keys": batch.get("image_keys")}

    def forward(self, model: nn.Module, inputs: dict) -> dict:
        vision = (self.vision_features(inputs["pixel_values"], inputs["image_keys"])
                  if self.vision_features else None)
        return model(inputs["pixel_values"], inputs["image_index"], inputs["input_ids"], inputs["attention_mask"],
                     vision)

    def loss(self, outputs: dict, inputs: dict) -> dict[str, torch.Tensor]:
        return self.criterion(as_float32(outputs), inputs["targets"])

    def batch_record(self, batch: dict) -> dict:
        return {"queries_per_batch": len(batch["prompts"])}

    def _tokens(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and attention_mask (Q, T), tokenised once per distinct prompt."""
        for prompt in set(prompts) - set(self._text_cache):
            encoded = self.tokenize([prompt])
            self._text_cache[prompt] = (encoded["input_ids"][0], encoded["attention_mask"][0])
        ids, mask = zip(*(self._text_cache[p] for p in prompts))
        return torch.stack(ids).to(device), torch.stack(mask).to(device)


class InteractiveTask:
    """SAM3's tracker: (image, object) batches, SAM 2's correction rounds, ``TrackerCriterion``.
    With ``vision_features`` (a feature cache's ``encode``), as ``ConceptTask``: each row's
    image key, and the vision encoder's output looked up instead of computed."""

    def __init__(self, config: Config, image_size: int, vision_features: VisionFeatures | None = None):
        self.config, self.image_size = config, image_size
        self.vision_features = vision_features
        self.criterion = TrackerCriterion()

    def num_samples(self, split: CocoSplit) -> int:
        return len(ObjectDataset(split, self.config.data, self.image_size, train=False))

    def prompts(self, splits: dict[str, CocoSplit]) -> list[str]:
        return []   # the tracker reads no text

    def loader(self, split: CocoSplit, train: bool, epoch: int) -> DataLoader:
        cfg = self.config.training
        loader = build_object_loader(split, self.config.data, self.image_size, cfg.batch_size, train=train,
                                     seed=cfg.seed, epoch=epoch)
        return with_image_keys(loader) if self.vision_features else loader

    def wrap(self, model: nn.Module) -> nn.Module:
        cfg = self.config.training
        return CorrectionRounds(model, cfg.correction_rounds, cfg.correction_from_mask_probability)

    def inputs(self, batch: dict, device: torch.device) -> dict:
        keys = ("pixel_values", "masks", "boxes", "points", "labels")
        return {**{k: batch[k].to(device) for k in keys}, "kind": batch["kind"], "prompt_seed": batch["prompt_seed"],
                "image_keys": batch.get("image_keys")}

    def forward(self, model: nn.Module, inputs: dict) -> list[dict[str, torch.Tensor]]:
        vision = (self.vision_features(inputs["pixel_values"], inputs["image_keys"])
                  if self.vision_features else None)
        return model(inputs["pixel_values"], inputs["masks"], inputs["kind"], inputs["boxes"], inputs["points"],
                     inputs["labels"], inputs["prompt_seed"], vision)

    def loss(self, outputs: list[dict[str, torch.Tensor]], inputs: dict) -> dict[str, torch.Tensor]:
        steps = [{k: v.float() for k, v in step.items()} for step in outputs]
        return self.criterion([steps], inputs["masks"][None])   # one frame

    def batch_record(self, batch: dict) -> dict:
        return {"objects_per_batch": len(batch["masks"]), "prompt": batch["kind"]}


class VideoTask:
    """SAM3's video tracker: clips of a DAVIS / YouTube-VOS split (``data.video.clips``: SAM 2's
    sampler, ``data.clip_frames`` frames, frame 0's prompts), SAM 2's ``forward_tracking``
    (``ClipTracking``) and ``TrackerCriterion`` over every frame: SAM 2 sums its loss over
    frames (``MultiStepMultiMasksAndIous.forward``), and so does the criterion given T frames.

    DAVIS's void pixels (the batch's ``valid``) count as background in the loss for now
    (``TrackerCriterion`` has no per-pixel weight); the synthetic clips have none."""

    def __init__(self, config: Config, image_size: int):
        self.config, self.image_size = config, image_size
        self.criterion = TrackerCriterion()

    def num_samples(self, split: VideoSplit) -> int:
        return len(long_enough(split, self.config.data.clip_frames))   # one clip per sequence per epoch

    def prompts(self, splits: dict[str, VideoSplit]) -> list[str]:
        return []   # the tracker reads no text

    def loader(self, split: VideoSplit, train: bool, epoch: int) -> DataLoader:
        cfg = self.config.training
        return build_clip_loader(split, self.config.data, self.image_size, cfg.batch_size, train=train,
                                 seed=cfg.seed, epoch=epoch)

    def wrap(self, model: nn.Module) -> nn.Module:
        cfg = self.config.training
        return ClipTracking(model, cfg.correction_rounds, cfg.frames_to_correct, cfg.correction_from_mask_probability)

    def inputs(self, batch: dict, device: torch.device) -> dict:
        keys = ("pixel_values", "masks", "object_clip_index", "boxes", "points", "labels")
        return {**{k: batch[k].to(device) for k in keys}, "kind": batch["kind"], "prompt_seed": batch["prompt_seed"]}

    def forward(self, model: nn.Module, inputs: dict) -> list[list[dict[str, torch.Tensor]]]:
        return model(inputs["pixel_values"], inputs["masks"], inputs["object_clip_index"], inputs["kind"],
                     inputs["boxes"], inputs["points"], inputs["labels"], inputs["prompt_seed"])

    def loss(self, outputs: list[list[dict[str, torch.Tensor]]], inputs: dict) -> dict[str, torch.Tensor]:
        frames = [[{k: v.float() for k, v in step.items()} for step in frame] for frame in outputs]
        return self.criterion(frames, inputs["masks"].transpose(0, 1))   # (T, O, S, S)

    def batch_record(self, batch: dict) -> dict:
        return {"clips_per_batch": len(batch["sequences"]), "objects_per_batch": len(batch["masks"]),
                "prompt": batch["kind"]}


def read_clip_split(root: Path, name: str, skip_invalid: bool) -> VideoSplit:
    """The gate training passes for a video split (``coco.split.check_split``'s for clips):
    the layout read, refused in one line when it has errors (unless ``skip_invalid``: the
    sequences the layout could not read are then left out) or no sequence."""
    split = load_video_split(root)
    errors = split.errors
    if errors and not skip_invalid:
        plural = "s" if len(errors) > 1 else ""
        raise DataError(f"{len(errors)} error{plural} in {root} (first: {errors[0].message}); run `sam3-lora data "
                        f"validate {root.parent}` for the list, or set data.skip_invalid=true to skip them")
    if not split.sequences:
        raise DataError(f"no usable sequence in {root} ({name} split); run `sam3-lora data validate {root.parent}` "
                        f"to see why")
    return split


class CorrectionRounds(nn.Module):
    """SAM 2's interactive training of one batch as one module (DDP sees a single forward).

    The image is encoded once; the first round takes the batch's initial prompt (SAM 2:
    three masks for a single click, one otherwise), each of ``rounds`` later rounds adds a
    correction click per object, drawn from the errors of the previous round's best mask
    (highest predicted IoU) against the ground truth, and takes that round's mask logits as
    its mask input (SAM 2's ``iter_use_prev_mask_pred``; detached here, so gradients reach
    each round through its own prediction only). A mask prompt gets no correction rounds.

    Returns one step per round: ``pred_masks`` (B, M, S, S) logits upsampled to the input
    (SAM 2 computes its loss at the image resolution), ``iou_scores`` (B, M),
    ``object_score_logits`` (B, 1).
    """

    def __init__(self, model: nn.Module, rounds: int, from_mask_probability: float = PROB_FROM_GT):
        super().__init__()
        self.model, self.rounds, self.from_mask_probability = model, rounds, from_mask_probability

    def forward(self, pixel_values: torch.Tensor, masks: torch.Tensor, kind: str, boxes: torch.Tensor,
                points: torch.Tensor, labels: torch.Tensor, prompt_seed: int,
                vision: Sam3VisionEncoderOutput | None = None) -> list[dict[str, torch.Tensor]]:
        """``vision``: the vision encoder's output for ``pixel_values`` when it comes from a
        feature cache (the encoder is then not run)."""
        size = pixel_values.shape[-1]
        prompt = self._initial_prompt(PromptKind(kind), masks, boxes, points, labels, size)
        image = ({"pixel_values": pixel_values} if vision is None
                 else {"image_embeddings": image_embeddings(self.model, vision)})
        out = self.model(**image, multimask_output=kind == PromptKind.CLICK, **prompt)
        steps = [_step(out, size)]
        if kind == PromptKind.MASK:
            return steps
        generator = torch.Generator().manual_seed(prompt_seed)
        clicks = (prompt.get("input_points"), prompt.get("input_labels"))
        for _ in range(self.rounds):
            best = _best_mask_logits(out)   # (B, m, m)
            predicted = F.interpolate(best[:, None], size=(size, size), mode="bilinear")[:, 0] > 0
            new_points, new_labels = correction_clicks(masks, predicted, generator, self.from_mask_probability)
            clicks = append_clicks(clicks, new_points.to(masks.device), new_labels.to(masks.device))
            out = self.model(image_embeddings=out.image_embeddings, input_points=clicks[0], input_labels=clicks[1],
                             input_boxes=prompt.get("input_boxes"), input_masks=best[:, None].detach(),
                             multimask_output=False)
            steps.append(_step(out, size))
        return steps

    @staticmethod
    def _initial_prompt(kind: PromptKind, masks, boxes, points, labels, size: int) -> dict[str, torch.Tensor]:
        """The tracker's keyword arguments for the first round (shapes in ``model.tracker``)."""
        if kind == PromptKind.BOX:
            return {"input_boxes": boxes[:, None]}
        if kind == PromptKind.CLICK:
            return {"input_points": points[:, None], "input_labels": labels[:, None].long()}
        side = mask_size_for(size)   # the low-resolution masks' side, as the tracker predicts them
        low = F.interpolate(masks[:, None].float(), size=(side, side), mode="bilinear", antialias=True)
        return {"input_masks": low}


def _best_mask_logits(out) -> torch.Tensor:
    """(B, m, m) low-resolution logits of each object's mask with the highest predicted IoU."""
    masks, scores = out.pred_masks[:, 0], out.iou_scores[:, 0]   # (B, M, m, m), (B, M)
    best = scores.argmax(dim=1)
    return masks[torch.arange(len(masks), device=masks.device), best]


def _step(out, size: int) -> dict[str, torch.Tensor]:
    """One round's outputs for ``TrackerCriterion``: the first object of each row."""
    low = out.pred_masks[:, 0]   # (B, M, m, m)
    return {"pred_masks": F.interpolate(low, size=(size, size), mode="bilinear"),
            "iou_scores": out.iou_scores[:, 0], "object_score_logits": out.object_score_logits[:, 0]}
