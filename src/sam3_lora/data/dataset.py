"""Concept queries over a COCO split: one image, many (prompt, all-its-instances) queries.

SAM3 segments every instance of a concept named by a prompt. Each image therefore yields:

* one **positive** query per category present (``category`` mode: prompt
  ``prompts.get(name, name)``), or one query for all objects (``generic`` mode: prompt
  ``generic_prompt``), each with all its non-crowd instances, the largest
  ``max_objects_per_query`` kept;
* **negative** queries, whose target is empty: categories absent from the image (only the
  verified-absent ``neg_category_ids`` when the image lists any, never a
  ``not_exhaustive`` category) plus ``negative_phrases``. Training draws ``num_negatives``
  of them at random; evaluation takes every absent category, as SAM3 validates, and no
  phrases. In ``generic`` mode only phrases can be negatives (an absent category's prompt
  would be the generic prompt, which is present).

Crowd objects are never targets; a category present only as crowd is neither a positive
(its target would wrongly be empty) nor a negative. Masks stay compact (RLE) in the sample;
``collate`` decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sam3_lora.config import DataConfig
from sam3_lora.data.images import open_image, open_image_reduced
from sam3_lora.data.records import CocoSplit, ImageRecord, ObjectRecord
from sam3_lora.data.rle import to_rle
from sam3_lora.data.transforms import build_transform
from sam3_lora.errors import DataError
from sam3_lora.model.processing import image_to_tensor

# Independent random streams per sample, so that changing one option (e.g. the number of
# negatives) does not change the draws of another (e.g. the flip).
QUERY_STREAM, AUGMENT_STREAM = 0, 1
PHRASE_CATEGORY_ID = -1
"""``category_id`` of queries that are not one category: phrase negatives, generic mode."""


def sample_generator(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index, stream) alone: same in any worker."""
    entropy = [seed % 2**64, epoch % 2**64, index, stream]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass
class Query:
    """One prompt for one image and the objects it must find (none for a negative)."""

    prompt: str
    category_id: int
    objects: list[ObjectRecord] = field(default_factory=list)


def _area(obj: ObjectRecord) -> float:
    return obj.area if obj.area > 0 else float(obj.bbox[2] * obj.bbox[3])


def cap_objects(objects: list[ObjectRecord], limit: int) -> list[ObjectRecord]:
    """At most ``limit`` objects: the largest by area (ties: first), in their original order."""
    if len(objects) <= limit:
        return objects
    ranked = sorted(range(len(objects)), key=lambda i: -_area(objects[i]))  # stable
    return [objects[i] for i in sorted(ranked[:limit])]


class ConceptDataset(Dataset):
    """Images of a split as (transformed image, concept queries) samples.

    ``__getitem__`` returns a dict:
      ``pixel_values`` (3, S, S) float normalised; ``image_id`` int; ``orig_size`` (h, w);
      ``geometry`` (transforms.Geometry); ``queries``: list of dicts with ``prompt`` str,
      ``category_id`` int (-1: not one category), ``is_positive`` bool, ``boxes`` (n, 4)
      float cxcywh in [0, 1] of the S x S input, ``masks`` list of n RLE dicts (None for a
      box-only object), ``has_mask`` (n,) bool. Positives come first, in category order.
    """

    def __init__(
        self, split: CocoSplit, data_cfg: DataConfig, image_size: int, train: bool, seed: int = 0
    ) -> None:
        self.split = split
        self.cfg = data_cfg
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.transform = build_transform(data_cfg, image_size, train)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds augmentation and negative sampling (call before each epoch's loader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.images)

    def prompt_for(self, category_id: int) -> str:
        name = self.split.categories[category_id]
        return self.cfg.prompts.get(name, name)

    def prompt_vocabulary(self) -> list[str]:
        """Every prompt text this dataset can ask, sorted (what an adapter records)."""
        if self.cfg.prompt_mode == "generic":
            positives = [self.cfg.generic_prompt]
        else:
            positives = [self.prompt_for(c) for c in self.split.categories]
        negatives = self.cfg.negative_phrases if self.train else []
        return sorted({*positives, *negatives})

    def plan_queries(self, record: ImageRecord, generator: torch.Generator | None) -> list[Query]:
        """Positive queries then negative ones for one image (no pixels involved)."""
        positives = self._positive_queries(record)
        taken = {query.prompt.strip().lower() for query in positives}
        if self.cfg.prompt_mode == "generic":
            taken.add(self.cfg.generic_prompt.strip().lower())
        negatives = _dedupe(self._negative_candidates(record), taken)
        if self.train:
            count = min(self.cfg.num_negatives, len(negatives))
            order = torch.randperm(len(negatives), generator=generator)[:count]
            negatives = [negatives[i] for i in sorted(order.tolist())]
        return positives + negatives

    def _positive_queries(self, record: ImageRecord) -> list[Query]:
        limit = self.cfg.max_objects_per_query
        known = [o for o in record.objects if o.category_id in self.split.categories]
        targets = [o for o in known if not o.iscrowd]
        if self.cfg.prompt_mode == "generic":
            if not targets and known:  # only crowd: an empty target would be wrong
                return []
            return [Query(self.cfg.generic_prompt, PHRASE_CATEGORY_ID, cap_objects(targets, limit))]
        queries = []
        for category_id in self.split.categories:
            objects = [o for o in targets if o.category_id == category_id]
            if objects:
                queries.append(
                    Query(self.prompt_for(category_id), category_id, cap_objects(objects, limit))
                )
        return queries

    def _negative_candidates(self, record: ImageRecord) -> list[Query]:
        phrases = [Query(p, PHRASE_CATEGORY_ID) for p in self.cfg.negative_phrases]
        phrases = phrases if self.train else []  # evaluation: the dataset's concepts only
        if self.cfg.prompt_mode == "generic":
            return phrases
        present = {o.category_id for o in record.objects}  # crowd included: it is there
        never = present | set(record.not_exhaustive_category_ids)
        pool = record.neg_category_ids or list(self.split.categories)
        absent = [c for c in pool if c in self.split.categories and c not in never]
        return [Query(self.prompt_for(c), c) for c in absent] + phrases

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.split.images[index]
        query_rng = (
            sample_generator(self.seed, self.epoch, index, QUERY_STREAM) if self.train else None
        )
        queries = self.plan_queries(record, query_rng)
        objects = [obj for query in queries for obj in query.objects]
        boxes_xywh = torch.tensor([obj.bbox for obj in objects], dtype=torch.float).reshape(-1, 4)
        image = self._load(record)
        augment_rng = sample_generator(self.seed, self.epoch, index, AUGMENT_STREAM)
        pixels, boxes_xyxy, geometry = self.transform(image, boxes_xywh, augment_rng,
                                                      orig_size=(record.height, record.width))
        boxes = _xyxy_to_cxcywh(boxes_xyxy) / self.image_size
        masks = [self._rle(record, obj) for obj in objects]
        return {
            "pixel_values": pixels,
            "image_id": record.id,
            "orig_size": (record.height, record.width),
            "geometry": geometry,
            "queries": _query_dicts(queries, boxes, masks),
        }

    def _load(self, record: ImageRecord) -> torch.Tensor:
        """(3, H, W) uint8, H x W the full image's size or, in training, a reduced decode of
        at least ``image_size`` a side (a JPEG photo: ``images.open_image_reduced``; the
        transform resizes it as it would the full image). The full image's size must be the
        one the annotations were made on. Evaluation decodes in full: validation sees the
        pixels inference sees."""
        if self.train:
            decoded, (width, height) = open_image_reduced(record.path, self.image_size)
        else:
            decoded = open_image(record.path)
            width, height = decoded.size
        if (height, width) != (record.height, record.width):
            raise DataError(
                f"{self.split.annotation_path}: image id {record.id} ({record.file_name}) has "
                f"width={record.width}, height={record.height} but the file is {width}x{height}; "
                "fix width/height there or re-export the image"
            )
        # np.array: a writable copy (torch warns on PIL's read-only buffer).
        return image_to_tensor(np.array(decoded))

    def _rle(self, record: ImageRecord, obj: ObjectRecord):
        try:
            return to_rle(obj.segmentation, record.height, record.width)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{self.split.annotation_path}: annotation id {obj.id} field segmentation: "
                f"{exc}; fix it or remove the segmentation (the object becomes box-only)"
            ) from None


def _query_dicts(queries: list[Query], boxes: torch.Tensor, masks: list) -> list[dict[str, Any]]:
    """Splits the image's (n_total, 4) boxes and n_total RLEs back into per-query targets."""
    out, start = [], 0
    for query in queries:
        stop = start + len(query.objects)
        out.append(
            {
                "prompt": query.prompt,
                "category_id": query.category_id,
                "is_positive": stop > start,
                "boxes": boxes[start:stop],
                "masks": masks[start:stop],
                "has_mask": torch.tensor(
                    [m is not None for m in masks[start:stop]], dtype=torch.bool
                ),
            }
        )
        start = stop
    return out


def _dedupe(queries: list[Query], taken: set[str]) -> list[Query]:
    """Drops negatives whose prompt is a positive's (it would contradict it) or repeats."""
    kept = []
    for query in queries:
        key = query.prompt.strip().lower()
        if key not in taken:
            taken.add(key)
            kept.append(query)
    return kept


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
