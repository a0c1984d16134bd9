"""Batches of images with their concept queries, for one shared image encoding per image.

Batch contract (B images, Q queries in all, S the input size, m = ``mask_size``)::

    pixel_values        (B, 3, S, S) float   normalised as SAM3 expects (mean 0.5, std 0.5)
    image_ids           (B,)         long    COCO image ids
    orig_sizes          (B, 2)       long    (h, w) of the original images
    query_image_index   (Q,)         long    image of each query; image 0's queries first
    prompts             list[str]            Q prompt texts
    query_category_ids  (Q,)         long    category id; -1 for a phrase negative or a
                                             generic-mode query
    is_positive         (Q,)         bool    the query has at least one target instance
    targets             list of Q dicts:
        boxes           (n, 4)       float   cx, cy, w, h in [0, 1] of the S x S input
        masks           (n, m, m)    bool    aligned with the S x S input (padding False)
        has_mask        (n,)         bool    False for box-only objects: no mask loss
        category_id     int                  as query_category_ids

``n`` is 0 for a negative query: boxes (0, 4), masks (0, m, m), has_mask (0,).
Within an image, positives come first (in category order), then negatives. Masks are
decoded here, from the compact RLEs of the samples, so in loader workers.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from sam3_lora.config import DataConfig
from sam3_lora.data.dataset import ConceptDataset, sample_generator
from sam3_lora.data.masks import rles_to_input
from sam3_lora.data.records import CocoSplit

SHUFFLE_STREAM = 2  # the data order's random stream (dataset.py uses 0 and 1)


def mask_size_for(image_size: int, patch_size: int = 14) -> int:
    """Side of SAM3's predicted masks: 4x the ViT patch grid (288 for 1008 px, patch 14)."""
    return 4 * (image_size // patch_size)


def collate(samples: list[dict[str, Any]], mask_size: int) -> dict[str, Any]:
    """``ConceptDataset`` samples -> one batch (see the module docstring for shapes)."""
    query_image_index, prompts, category_ids, positive, targets = [], [], [], [], []
    for image_index, sample in enumerate(samples):
        queries = sample["queries"]
        masks = _decode_image_masks(sample, mask_size)
        start = 0
        for query in queries:
            count = len(query["masks"])
            query_image_index.append(image_index)
            prompts.append(query["prompt"])
            category_ids.append(query["category_id"])
            positive.append(query["is_positive"])
            targets.append(
                {
                    "boxes": query["boxes"].reshape(count, 4).float(),
                    "masks": masks[start : start + count],
                    "has_mask": query["has_mask"].reshape(count),
                    "category_id": query["category_id"],
                }
            )
            start += count
    return {
        "pixel_values": _stack_images([s["pixel_values"] for s in samples]),
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.long),
        "orig_sizes": torch.tensor(
            [list(s["orig_size"]) for s in samples], dtype=torch.long
        ).reshape(-1, 2),
        "query_image_index": torch.tensor(query_image_index, dtype=torch.long),
        "prompts": prompts,
        "query_category_ids": torch.tensor(category_ids, dtype=torch.long),
        "is_positive": torch.tensor(positive, dtype=torch.bool),
        "targets": targets,
    }


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) each -> (B, 3, S, S). In a loader worker, stacked straight into shared
    memory (as torch's default_collate does): saves a copy of ~12 MB per 1008 px image."""
    out = None
    if get_worker_info() is not None:
        numel = sum(image.numel() for image in images)
        storage = images[0]._typed_storage()._new_shared(numel, device=images[0].device)
        out = images[0].new(storage).resize_(len(images), *images[0].shape)
    return torch.stack(images, out=out)


def _decode_image_masks(sample: dict[str, Any], mask_size: int) -> torch.Tensor:
    """All queries' masks of one image, decoded in one call: (n_total, m, m) bool."""
    rles = [rle for query in sample["queries"] for rle in query["masks"]]
    return rles_to_input(rles, sample["geometry"], mask_size)


def seed_worker(worker_id: int) -> None:
    """Seeds Python's and NumPy's RNGs from the worker's torch seed (derived from the
    loader's generator), for any third-party randomness; ours uses explicit generators."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_dataloader(
    split: CocoSplit,
    data_cfg: DataConfig,
    image_size: int,
    batch_size: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
) -> DataLoader:
    """A loader of ``collate`` batches; shuffled (seeded by seed and epoch) when training.

    Augmentation and negatives are seeded per sample from (seed, epoch, index), so the same
    arguments give identical batches for any ``data_cfg.num_workers``. Build one loader per
    epoch (it is cheap) so that ``epoch`` reseeds order and augmentation.
    """
    dataset = ConceptDataset(split, data_cfg, image_size, train=train, seed=seed)
    dataset.set_epoch(epoch)
    return loader_for(dataset, functools.partial(collate, mask_size=mask_size_for(image_size)), data_cfg,
                      batch_size, train, seed, epoch)


def loader_for(dataset, collate_fn, data_cfg: DataConfig, batch_size: int, train: bool, seed: int,
               epoch: int) -> DataLoader:
    """The loader of any of our datasets: shuffled by (seed, epoch) when training, workers
    seeded, ``data_cfg.num_workers`` processes (shared by both tasks' loaders)."""
    workers = data_cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=sample_generator(seed, epoch, 0, SHUFFLE_STREAM),
        num_workers=workers,
        collate_fn=collate_fn,
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
