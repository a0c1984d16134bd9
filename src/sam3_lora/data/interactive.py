"""(image, object) samples for the tracker (``model.task: interactive``), prompted as SAM 2 trains.

Any COCO split with masks trains the tracker: each non-crowd object with a mask is one
sample, its image read, checked and transformed as the concept task does
(``dataset.ConceptDataset``'s loading, ``transforms``' augmentation), its mask decoded onto
the S x S input. Objects without a mask (box-only) and crowd regions are not objects to
click on: they are left out, and one warning per split says how many.

Each sample carries every initial prompt of SAM 2's choice (``data.prompts``), drawn from a
generator seeded by (seed, epoch, index) alone, so that any number of loader workers and a
resumed run see the same prompts: the prompt kind (mask with ``data.mask_prompt_probability``,
else a noisy box or one click, half each), the noisy box, the click (uniform inside the mask,
or at its centre with ``data.center_click_probability``), and a seed for the
correction clicks of later rounds. SAM 2 chooses one kind per batch: ``collate_objects``
takes the first sample's kind and correction seed for the whole batch.

Batch contract (B objects, S the input size)::

    pixel_values     (B, 3, S, S)  float  normalised, one image row per object
    masks            (B, S, S)     bool   the object on the input (padding False); may be
                                          empty if it vanished at this scale (then absent)
    boxes            (B, 4)        float  noisy box x1, y1, x2, y2, input pixels (inclusive)
    points           (B, 1, 2)     float  one click x, y, input pixels
    labels           (B, 1)        int32  1 positive (0: negative, for an empty mask)
    kind             str                  "mask", "box" or "click": the batch's prompt
    prompt_seed      int                  seeds the batch's correction clicks
    image_ids, annotation_ids, category_ids  (B,) long
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader

from sam3_lora.config import DataConfig
from sam3_lora.data.collate import loader_for
from sam3_lora.data.dataset import AUGMENT_STREAM, ConceptDataset, sample_generator
from sam3_lora.data.masks import rles_to_input
from sam3_lora.data.prompts import box_prompt, choose_prompt_kind, first_click
from sam3_lora.data.records import CocoSplit, ObjectRecord
from sam3_lora.errors import DataError

PROMPT_STREAM = 3   # dataset.py: 0 queries, 1 augmentation (shared here); collate.py: 2 data order


class ObjectDataset(ConceptDataset):
    """The objects of a split with masks, one sample each (see the module docstring).

    Reuses ``ConceptDataset``'s image loading, size check, transform and RLE reading; its
    concept queries are not used.
    """

    def __init__(self, split: CocoSplit, data_cfg: DataConfig, image_size: int, train: bool,
                 seed: int = 0) -> None:
        super().__init__(split, data_cfg, image_size, train, seed)
        self.objects = object_index(split)
        if not self.objects:
            raise DataError(f"{split.annotation_path}: no object has a mask; model.task=interactive trains on "
                            f"segmentation masks (polygons or RLE), add them or use model.task=concept")

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, obj = self.objects[index]
        record = self.split.images[image_index]
        image = self._load(record)
        augment = sample_generator(self.seed, self.epoch, index, AUGMENT_STREAM)
        box_xywh = torch.tensor([obj.bbox], dtype=torch.float)
        pixels, box_xyxy, geometry = self.transform(image, box_xywh, augment, orig_size=(record.height, record.width))
        mask = rles_to_input([self._rle(record, obj)], geometry, self.image_size)[0]
        return {"pixel_values": pixels, "mask": mask, "image_id": record.id, "annotation_id": obj.id,
                "category_id": obj.category_id,
                **initial_prompts(mask, box_xyxy[0], self.cfg.mask_prompt_chance("interactive"),
                                  sample_generator(self.seed, self.epoch, index, PROMPT_STREAM),
                                  self.cfg.center_click_probability)}


def object_index(split: CocoSplit) -> list[tuple[int, ObjectRecord]]:
    """(image index, object) of every non-crowd object with a mask; warns once with the
    count of those left out."""
    kept, box_only, crowd = [], 0, 0
    for image_index, record in enumerate(split.images):
        for obj in record.objects:
            if obj.iscrowd:
                crowd += 1
            elif not obj.segmentation:
                box_only += 1
            else:
                kept.append((image_index, obj))
    if box_only or crowd:
        warnings.warn(f"{split.annotation_path}: {box_only} objects without a mask and {crowd} crowd regions "
                      f"of split {split.name} are left out of model.task=interactive (it clicks on masks); "
                      f"{len(kept)} objects remain", UserWarning, stacklevel=3)
    return kept


def initial_prompts(mask: torch.Tensor, fallback_box: torch.Tensor, mask_probability: float,
                    generator: torch.Generator, center_probability: float = 0.0) -> dict[str, Any]:
    """Every initial prompt of one (S, S) mask, drawn in a fixed order from ``generator``:
    kind, box (4,), click points (1, 2) and labels (1,), and the correction seed.

    The click is uniform inside the mask, or with ``center_probability`` at its centre
    (``prompts.first_click``). An empty mask (the object vanished at this
    scale) has no box of its own: it gets ``fallback_box``, its annotation box on the input,
    and a negative click."""
    kind = choose_prompt_kind(generator, prob_points=1.0 - mask_probability)
    box = box_prompt(mask[None], generator)[0] if mask.any() else fallback_box.float()
    points, labels = first_click(mask[None], generator, center_probability)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return {"kind": kind.value, "box": box, "points": points[0], "labels": labels[0], "prompt_seed": seed}


def collate_objects(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``ObjectDataset`` samples -> one batch (see the module docstring)."""
    first = samples[0]

    def longs(key: str) -> torch.Tensor:
        return torch.tensor([s[key] for s in samples], dtype=torch.long)

    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "masks": torch.stack([s["mask"] for s in samples]),
        "boxes": torch.stack([s["box"] for s in samples]),
        "points": torch.stack([s["points"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        # SAM 2 prompts a whole batch one way (one draw per batch): the first sample's.
        "kind": first["kind"],
        "prompt_seed": first["prompt_seed"],
        "image_ids": longs("image_id"), "annotation_ids": longs("annotation_id"),
        "category_ids": longs("category_id"),
    }


def build_object_loader(split: CocoSplit, data_cfg: DataConfig, image_size: int, batch_size: int,
                        train: bool, seed: int = 0, epoch: int = 0) -> DataLoader:
    """``collate.build_dataloader`` for the tracker's (image, object) samples."""
    dataset = ObjectDataset(split, data_cfg, image_size, train=train, seed=seed)
    dataset.set_epoch(epoch)
    return loader_for(dataset, collate_objects, data_cfg, batch_size, train, seed, epoch)
