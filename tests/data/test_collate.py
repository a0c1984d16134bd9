"""The batch contract of ``collate`` and the seeded, worker-independent data loader."""

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sam3_lora.config import DataConfig
from sam3_lora.data.collate import build_dataloader, collate, mask_size_for
from sam3_lora.data.dataset import ConceptDataset
from sam3_lora.data.masks import mask_to_box
from sam3_lora.data.records import CocoSplit, ImageRecord, ObjectRecord

SIZE = 112
MASK = mask_size_for(SIZE)  # 32
CATEGORIES = {1: "red", 2: "green", 3: "blue"}


def shapes_split(tmp_path: Path, count: int = 6) -> CocoSplit:
    """``count`` 80x60 images, each with a red square and, on odd images, a green one."""
    records = []
    for index in range(count):
        image = Image.new("RGB", (80, 60), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        x = 5 + 7 * index
        draw.rectangle([x, 10, x + 19, 29], fill=(255, 0, 0))
        objects = [
            ObjectRecord(
                10 * index + 1,
                1,
                [x, 10, 20, 20],
                [[x, 10, x + 20, 10, x + 20, 30, x, 30]],
                area=400,
            )
        ]
        if index % 2:
            draw.rectangle([50, 35, 69, 54], fill=(0, 255, 0))
            objects.append(
                ObjectRecord(10 * index + 2, 2, [50, 35, 20, 20], None, area=400)
            )  # box-only
        path = tmp_path / f"{index}.png"
        image.save(path)
        records.append(ImageRecord(index + 1, path.name, path, 80, 60, objects))
    return CocoSplit(
        "train", tmp_path, tmp_path / "_annotations.coco.json", dict(CATEGORIES), records
    )


def test_mask_size_is_four_times_the_patch_grid():
    assert (
        mask_size_for(1008) == 288 and mask_size_for(112) == 32 and mask_size_for(1008, 16) == 252
    )


def test_batch_contract(tmp_path):
    cfg = DataConfig(num_negatives=1, negative_phrases=["dog"], horizontal_flip=0.5)
    dataset = ConceptDataset(shapes_split(tmp_path), cfg, SIZE, train=True)
    batch = collate([dataset[0], dataset[1]], MASK)
    assert (
        batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
        and batch["pixel_values"].dtype == torch.float32
    )
    assert batch["image_ids"].tolist() == [1, 2] and batch["image_ids"].dtype == torch.long
    assert batch["orig_sizes"].tolist() == [[60, 80], [60, 80]]
    # image 0: red + 1 negative; image 1: red, green + 1 negative; image 0's queries first.
    assert batch["query_image_index"].tolist() == [0, 0, 1, 1, 1]
    assert batch["is_positive"].tolist() == [True, False, True, True, False]
    assert batch["prompts"][:1] == ["red"] and batch["prompts"][2:4] == ["red", "green"]
    assert len(batch["targets"]) == len(batch["prompts"]) == batch["query_category_ids"].numel()
    for target, category_id in zip(batch["targets"], batch["query_category_ids"].tolist()):
        count = target["boxes"].shape[0]
        assert target["boxes"].shape == (count, 4) and target["boxes"].dtype == torch.float32
        assert target["masks"].shape == (count, MASK, MASK) and target["masks"].dtype == torch.bool
        assert target["has_mask"].shape == (count,) and target["has_mask"].dtype == torch.bool
        assert target["category_id"] == category_id
    negative = batch["targets"][1]
    assert negative["boxes"].shape == (0, 4) and negative["masks"].shape == (0, MASK, MASK)
    green = batch["targets"][3]
    assert green["has_mask"].tolist() == [False] and not green["masks"].any()


def test_masks_and_boxes_coincide_in_the_batch(tmp_path):
    cfg = DataConfig(num_negatives=0, min_resize_ratio=0.5, horizontal_flip=0.5)
    loader = build_dataloader(shapes_split(tmp_path), cfg, SIZE, batch_size=3, train=True, seed=3)
    for batch in loader:
        for target in batch["targets"]:
            for box, mask, has_mask in zip(target["boxes"], target["masks"], target["has_mask"]):
                if has_mask:
                    cx, cy, w, h = (box * MASK).tolist()
                    expected = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                    assert (mask_to_box(mask) - expected).abs().max() <= 1.0 + 1e-4


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert a["prompts"] == b["prompts"] and torch.equal(a["image_ids"], b["image_ids"])
        for ta, tb in zip(a["targets"], b["targets"]):
            assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])


def batches(split, seed, epoch=0, workers=0):
    cfg = DataConfig(
        num_negatives=1,
        negative_phrases=["dog"],
        min_resize_ratio=0.3,
        color_jitter=0.3,
        num_workers=workers,
    )
    return list(
        build_dataloader(split, cfg, SIZE, batch_size=2, train=True, seed=seed, epoch=epoch)
    )


def test_seeded_loader_is_identical_with_and_without_workers(tmp_path):
    split = shapes_split(tmp_path)
    reference = batches(split, seed=11)
    assert_same_batches(reference, batches(split, seed=11))
    assert_same_batches(reference, batches(split, seed=11, workers=2))
    order = [b["image_ids"].tolist() for b in reference]
    other_epoch = [b["image_ids"].tolist() for b in batches(split, seed=11, epoch=1)]
    other_seed = [b["image_ids"].tolist() for b in batches(split, seed=12)]
    assert order != other_epoch or order != other_seed


def test_eval_loader_is_in_order_and_unshuffled(tmp_path):
    cfg = DataConfig(horizontal_flip=1.0, color_jitter=0.5)  # ignored in evaluation
    split = shapes_split(tmp_path, count=4)
    loader = build_dataloader(split, cfg, SIZE, batch_size=4, train=False, seed=0)
    (batch,) = list(loader)
    assert batch["image_ids"].tolist() == [1, 2, 3, 4]
    plain = next(iter(build_dataloader(split, DataConfig(), SIZE, batch_size=4, train=False)))
    assert torch.equal(batch["pixel_values"], plain["pixel_values"])


def test_synthetic_dataset_end_to_end(tmp_path):
    """synth.py writes a Roboflow-style split; coco.py reads it; the loader batches it."""
    synth = pytest.importorskip("sam3_lora.data.synth")
    coco = pytest.importorskip("sam3_lora.data.coco.split")
    synth.synthesize(tmp_path / "shapes", images_per_split={"train": 4}, image_size=96, seed=0)
    split = coco.load_coco_split(tmp_path / "shapes" / "train")
    loader = build_dataloader(split, DataConfig(), SIZE, batch_size=2, train=True, seed=0)
    for batch in loader:
        assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
        positives = [t for t, p in zip(batch["targets"], batch["is_positive"]) if p]
        assert positives and all(len(t["boxes"]) > 0 for t in positives)
        assert all(((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() for t in positives)
        assert any(t["masks"].any() for t in positives)
