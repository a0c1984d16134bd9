"""Training clips for the video tracker, sampled from a DAVIS / YouTube-VOS split as SAM 2 trains.

SAM 2 trains its tracker on short clips (``training/dataset/vos_sampler.py``,
``RandomUniformSampler``; values of ``sam2/configs/sam2.1_training/
sam2.1_hiera_b+_MOSE_finetune.yaml``); this module follows it:

* one sample per sequence per epoch (``VOSDataset.__len__`` is the number of videos), its
  clip drawn afresh each epoch;
* a clip is ``data.clip_frames`` (SAM 2's ``num_frames``, 8) consecutive *annotated* frames
  (SAM 2 samples among the frames that have masks), played backwards with probability
  ``data.reverse_time_probability`` (``reverse_time_prob``, 0 in the MOSE config);
* only objects visible on the clip's first frame (after any reversal) are tracked, at most
  ``data.max_objects_per_clip`` of them (``max_num_objects``, 3) drawn at random; an object
  leaving the clip later keeps an all-False mask there (SAM 2's ``always_target``);
* a sequence with fewer annotated frames than a clip is refused, never padded (SAM 2's
  sampler raises for it): ``ClipDataset`` leaves such sequences out with one warning.

SAM 2 redraws (start, reversal) until the first frame shows an object; here the same
distribution is drawn in one go, over the (start, direction) pairs whose first frame shows
one, each weighted by its direction's probability (``ClipSampler``). A sequence where no
first frame shows an object is a ``DataError``.

Every frame of a clip goes through the image tracker's own transform
(``transforms.build_transform``: the evaluation resize to S x S, or SAM3's training
augmentation) with one generator seed for the whole clip, so every frame gets the same scale,
flip and jitter (SAM 2's ``consistent_transform``), and SAM3's normalisation. Masks follow
with ``masks.masks_to_input``. DAVIS's void pixels (255) are neither object nor background:
``valid`` is False there, and the loss must leave those pixels out (DAVIS's rule; SAM 2's
palette loader would take 255 for an object). The padding of a training scale stays valid
background, as on images.

The objects are prompted on the first frame as the image tracker prompts
(``interactive.initial_prompts``: mask with ``data.mask_prompt_probability``, SAM 2's 0.5 on
videos, else a noisy box or one click); SAM 2 prompts all of a batch one way, so a clip takes
its first object's kind and correction seed, and ``collate_clips`` the first clip's.

Randomness comes from generators seeded by (seed, epoch, index) alone, one stream per use:
the clip (``CLIP_STREAM``), augmentation (``dataset.AUGMENT_STREAM``) and prompts
(``interactive.PROMPT_STREAM``); the same arguments give the same batches with any number of
loader workers.

Batch contract (B clips, T = ``data.clip_frames``, O objects of all clips, S the input size)::

    pixel_values       (B, T, 3, S, S) float  normalised frames, in clip order
    valid              (B, T, S, S)    bool   False on void pixels (255): no loss there
    masks              (O, T, S, S)    bool   each object on each frame (padding False);
                                              clip 0's objects first
    object_clip_index  (O,)            long   the clip of each object
    object_ids         (O,)            long   its id in the index masks
    boxes              (O, 4)          float  noisy first-frame box x1, y1, x2, y2, input px
    points             (O, 1, 2)       float  one first-frame click x, y, input pixels
    labels             (O, 1)          int32  1 positive (0: the object vanished at this scale)
    kind               str                    "mask", "box" or "click": the batch's prompt
    prompt_seed        int                    seeds the batch's correction clicks
    frame_indices      (B, T)          long   each frame's index in its sequence's frames
    reversed           (B,)            bool   the clip plays backwards
    sequences          list[str]              B sequence names
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sam3_lora.config import DataConfig
from sam3_lora.data.collate import loader_for
from sam3_lora.data.dataset import AUGMENT_STREAM, sample_generator
from sam3_lora.data.interactive import PROMPT_STREAM, initial_prompts
from sam3_lora.data.masks import mask_to_box, masks_to_input
from sam3_lora.data.transforms import build_transform
from sam3_lora.data.video.layout import VOID_ID, VideoSequence, VideoSplit
from sam3_lora.errors import DataError
from sam3_lora.model.processing import image_to_tensor

CLIP_STREAM = 4   # dataset.py: 0 queries, 1 augmentation; collate.py: 2 order; interactive.py: 3 prompts


@dataclass(frozen=True)
class Clip:
    """What a sampler chose from one sequence."""

    frames: list[int]
    """Indices into the sequence's ``frame_paths``, in play order (descending if reversed)."""
    object_ids: list[int]
    """The tracked objects, ids ascending; each has pixels on ``frames[0]``."""
    reversed: bool


@dataclass(frozen=True)
class ClipSampler:
    """SAM 2's ``RandomUniformSampler`` (see the module docstring), drawing from a torch
    generator."""

    num_frames: int
    max_objects: int
    reverse_probability: float = 0.0

    def sample(self, sequence: VideoSequence, generator: torch.Generator) -> Clip:
        """A clip of ``sequence``: start and direction, then its objects, in that order."""
        annotated = sequence.annotated_frames
        if len(annotated) < self.num_frames:
            raise DataError(f"{_folder(sequence)}: sequence {sequence.name!r} has {len(annotated)} "
                            f"annotated frames, fewer than data.clip_frames={self.num_frames}; lower "
                            "data.clip_frames or annotate more frames")
        visible = _visible_objects(sequence)
        candidates = [(start, backwards) for start in range(len(annotated) - self.num_frames + 1)
                      for backwards in (False, True)]
        weights = torch.tensor([self._weight(backwards, visible, self._frames(annotated, start, backwards))
                                for start, backwards in candidates], dtype=torch.float64)
        if not weights.any():
            raise DataError(f"{_folder(sequence)}: no object is visible on any possible "
                            "first frame of a clip; annotate its objects or remove the sequence")
        start, backwards = candidates[int(torch.multinomial(weights, 1, generator=generator))]
        frames = self._frames(annotated, start, backwards)
        present = visible[frames[0]]
        chosen = torch.randperm(len(present), generator=generator)[:self.max_objects]
        return Clip(frames, sorted(present[i] for i in chosen.tolist()), backwards)

    def _frames(self, annotated: list[int], start: int, backwards: bool) -> list[int]:
        frames = annotated[start:start + self.num_frames]
        return frames[::-1] if backwards else frames

    def _weight(self, backwards: bool, visible: dict[int, list[int]], frames: list[int]) -> float:
        """The chance SAM 2 gives this (start, direction), 0 when its first frame shows no
        object (SAM 2 would draw again)."""
        if not visible.get(frames[0]):
            return 0.0
        return self.reverse_probability if backwards else 1.0 - self.reverse_probability


def _folder(sequence: VideoSequence):
    """The folder of a sequence's masks (of its frames if it has none), which errors about
    its annotations name."""
    return next(iter(sequence.mask_paths.values()), sequence.frame_paths[0]).parent


def _visible_objects(sequence: VideoSequence) -> dict[int, list[int]]:
    """Frame index -> ids of the objects with pixels there, ascending (``objects`` inverted)."""
    by_frame: dict[int, list[int]] = {}
    for object_id, frames in sequence.objects.items():
        for frame in frames:
            by_frame.setdefault(frame, []).append(object_id)
    return by_frame


def sampler_for(data_cfg: DataConfig) -> ClipSampler:
    """The clip sampler ``data_cfg`` asks for."""
    return ClipSampler(data_cfg.clip_frames, data_cfg.max_objects_per_clip,
                       data_cfg.reverse_time_probability)


class ClipDataset(Dataset):
    """One clip per sequence of a video split (see the module docstring).

    ``__getitem__`` returns a dict: ``pixel_values`` (T, 3, S, S) float; ``masks``
    (T, O, S, S) bool; ``valid`` (T, S, S) bool; ``object_ids`` (O,) long; ``frame_indices``
    (T,) long; ``reversed`` bool; ``sequence`` str; and the first frame's prompts of
    ``initial_prompts`` for the O objects: ``box`` (O, 4), ``points`` (O, 1, 2), ``labels``
    (O, 1), ``kind`` str, ``prompt_seed`` int.
    """

    def __init__(self, split: VideoSplit, data_cfg: DataConfig, image_size: int, train: bool,
                 seed: int = 0) -> None:
        self.split = split
        self.cfg = data_cfg
        self.image_size = image_size
        self.seed = seed
        self.epoch = 0
        self.sampler = sampler_for(data_cfg)
        self.transform = build_transform(data_cfg, image_size, train)
        self.sequences = long_enough(split, data_cfg.clip_frames)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds clips, augmentation and prompts (call before each epoch's loader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sequence = self.sequences[index]
        clip = self.sampler.sample(sequence, sample_generator(self.seed, self.epoch, index, CLIP_STREAM))
        object_ids = torch.tensor(clip.object_ids, dtype=torch.long)
        frames = [self._frame(sequence, frame, object_ids, index) for frame in clip.frames]
        pixels, masks, valid, boxes = (list(column) for column in zip(*frames))
        return {"pixel_values": torch.stack(pixels), "masks": torch.stack(masks), "valid": torch.stack(valid),
                "object_ids": object_ids, "frame_indices": torch.tensor(clip.frames, dtype=torch.long),
                "reversed": clip.reversed, "sequence": sequence.name,
                **self._prompts(masks[0], boxes[0], index)}

    def _frame(self, sequence: VideoSequence, frame: int, object_ids: torch.Tensor,
               index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame of sample ``index`` on the input: pixels (3, S, S), the objects' masks
        (O, S, S), valid (S, S) and the objects' boxes (O, 4) xyxy input pixels."""
        image = image_to_tensor(np.array(sequence.frame(frame)))   # np.array: writable
        ids = _mask_of(sequence, frame, image)
        objects = torch.from_numpy(ids)[None] == object_ids[:, None, None]   # (O, H, W)
        # One seed for every frame of the clip: the same scale, flip and jitter on each.
        augment = sample_generator(self.seed, self.epoch, index, AUGMENT_STREAM)
        pixels, boxes, geometry = self.transform(image, _xywh(mask_to_box(objects)), augment)
        void = torch.from_numpy(ids == VOID_ID)[None]
        return (pixels, masks_to_input(objects, geometry, self.image_size),
                ~masks_to_input(void, geometry, self.image_size)[0], boxes)

    def _prompts(self, first_masks: torch.Tensor, first_boxes: torch.Tensor, index: int) -> dict[str, Any]:
        """Each object's first-frame prompts (``initial_prompts``, one generator for the clip);
        the clip is prompted with its first object's kind and correction seed."""
        generator = sample_generator(self.seed, self.epoch, index, PROMPT_STREAM)
        drawn = [initial_prompts(mask, box, self.cfg.mask_prompt_chance("video"), generator,
                                 self.cfg.center_click_probability)
                 for mask, box in zip(first_masks, first_boxes)]
        return {"box": torch.stack([d["box"] for d in drawn]),
                "points": torch.stack([d["points"] for d in drawn]),
                "labels": torch.stack([d["labels"] for d in drawn]),
                "kind": drawn[0]["kind"], "prompt_seed": drawn[0]["prompt_seed"]}


def _mask_of(sequence: VideoSequence, frame: int, image: torch.Tensor) -> np.ndarray:
    """The (H, W) ids of an annotated frame, refused when its size is not its image's."""
    ids = sequence.mask(frame)
    height, width = image.shape[-2:]
    if ids.shape != (height, width):
        path = sequence.mask_paths[sequence.frame_paths[frame].stem]
        raise DataError(f"{path}: the mask is {ids.shape[1]}x{ids.shape[0]} but its frame "
                        f"{sequence.frame_paths[frame]} is {width}x{height}; re-export the mask "
                        "at the frame's size")
    return ids


def _xywh(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """(n, 4) x1, y1, x2, y2 (exclusive) -> (n, 4) COCO x, y, w, h."""
    return torch.cat([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], dim=1)


def long_enough(split: VideoSplit, clip_frames: int) -> list[VideoSequence]:
    """The sequences with at least ``clip_frames`` annotated frames; warns once with the count
    of those left out, and refuses a split where none is left."""
    kept = [s for s in split.sequences if len(s.annotated_frames) >= clip_frames]
    short = len(split.sequences) - len(kept)
    if not kept:
        raise DataError(f"{split.root}: no sequence has {clip_frames} annotated frames "
                        f"(data.clip_frames); lower data.clip_frames or add longer sequences")
    if short:
        warnings.warn(f"{split.root}: {short} sequences with fewer than {clip_frames} annotated "
                      f"frames (data.clip_frames) are left out of training; {len(kept)} remain",
                      UserWarning, stacklevel=3)
    return kept


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``ClipDataset`` samples -> one batch (see the module docstring)."""
    first = samples[0]

    def objects(key: str) -> torch.Tensor:
        return torch.cat([s[key] for s in samples])

    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]),
        "masks": torch.cat([s["masks"].transpose(0, 1) for s in samples]),
        "object_clip_index": torch.cat([torch.full((len(s["object_ids"]),), i, dtype=torch.long)
                                        for i, s in enumerate(samples)]),
        "object_ids": objects("object_ids"),
        "boxes": objects("box"),
        "points": objects("points"),
        "labels": objects("labels"),
        # SAM 2 prompts a whole batch one way (one draw per batch): the first clip's.
        "kind": first["kind"],
        "prompt_seed": first["prompt_seed"],
        "frame_indices": torch.stack([s["frame_indices"] for s in samples]),
        "reversed": torch.tensor([s["reversed"] for s in samples], dtype=torch.bool),
        "sequences": [s["sequence"] for s in samples],
    }


def build_clip_loader(split: VideoSplit, data_cfg: DataConfig, image_size: int, batch_size: int,
                      train: bool, seed: int = 0, epoch: int = 0) -> DataLoader:
    """``collate.loader_for`` over ``ClipDataset``: shuffled by (seed, epoch) in training,
    the same batches for any ``data_cfg.num_workers``. Build one loader per epoch."""
    dataset = ClipDataset(split, data_cfg, image_size, train=train, seed=seed)
    dataset.set_epoch(epoch)
    return loader_for(dataset, collate_clips, data_cfg, batch_size, train, seed, epoch)
