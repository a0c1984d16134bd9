"""ConceptDataset: positives, negatives, prompts, caps, crowd and box-only objects, seeding."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from sam3_lora.config import DataConfig
from sam3_lora.data.collate import build_dataloader
from sam3_lora.data.dataset import ConceptDataset
from sam3_lora.data.records import CocoSplit, ImageRecord, ObjectRecord
from sam3_lora.errors import DataError

CATEGORIES = {1: "red", 2: "green", 3: "blue", 4: "cat"}
SIZE = 56


def rect(obj_id, category_id, x, y, w, h, **kw):
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return ObjectRecord(
        obj_id, category_id, [x, y, w, h], kw.pop("segmentation", polygon), area=w * h, **kw
    )


def make_split(tmp_path: Path, images: list[dict], size=(64, 48)) -> CocoSplit:
    """Black images of ``size`` (w, h); each dict gives ``objects`` and optional lists."""
    records = []
    for index, spec in enumerate(images):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", size, (10, 10, 10)).save(path)
        records.append(
            ImageRecord(
                index + 1,
                path.name,
                path,
                size[0],
                size[1],
                spec.get("objects", []),
                spec.get("neg", []),
                spec.get("not_exhaustive", []),
            )
        )
    return CocoSplit(
        "train", tmp_path, tmp_path / "_annotations.coco.json", dict(CATEGORIES), records
    )


def one_image(tmp_path, **spec):
    return make_split(tmp_path, [spec])


TWO_REDS_ONE_GREEN = [rect(1, 1, 2, 2, 10, 10), rect(2, 1, 30, 20, 20, 20), rect(3, 2, 40, 2, 8, 8)]


def prompts_of(sample):
    return [q["prompt"] for q in sample["queries"]]


def test_one_query_per_present_category_with_all_instances(tmp_path):
    cfg = DataConfig(num_negatives=0, prompts={"red": "red thing"})
    sample = ConceptDataset(one_image(tmp_path, objects=TWO_REDS_ONE_GREEN), cfg, SIZE, train=True)[
        0
    ]
    assert prompts_of(sample) == ["red thing", "green"]
    red, green = sample["queries"]
    assert red["category_id"] == 1 and red["boxes"].shape == (2, 4) and len(red["masks"]) == 2
    assert green["is_positive"] and green["has_mask"].tolist() == [True]
    assert sample["pixel_values"].shape == (3, SIZE, SIZE)
    assert sample["orig_size"] == (48, 64) and sample["image_id"] == 1
    assert ((red["boxes"] >= 0) & (red["boxes"] <= 1)).all()


def test_train_negatives_are_absent_categories_or_phrases_with_empty_targets(tmp_path):
    cfg = DataConfig(num_negatives=3, negative_phrases=["dog", "red"])  # "red" is present
    dataset = ConceptDataset(one_image(tmp_path, objects=TWO_REDS_ONE_GREEN), cfg, SIZE, train=True)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        negatives = [q for q in dataset[0]["queries"] if not q["is_positive"]]
        assert len(negatives) == 3
        for query in negatives:
            assert query["prompt"] in {"blue", "cat", "dog"}
            assert query["boxes"].shape == (0, 4) and query["masks"] == []
            assert query["category_id"] == (
                -1 if query["prompt"] == "dog" else {"blue": 3, "cat": 4}[query["prompt"]]
            )


def test_eval_negatives_are_every_absent_category_deterministically(tmp_path):
    cfg = DataConfig(num_negatives=1, negative_phrases=["dog"])
    dataset = ConceptDataset(
        one_image(tmp_path, objects=TWO_REDS_ONE_GREEN), cfg, SIZE, train=False
    )
    first = dataset[0]
    assert prompts_of(first) == ["red", "green", "blue", "cat"]
    dataset.set_epoch(3)
    assert prompts_of(dataset[0]) == prompts_of(first)


def test_not_exhaustive_and_verified_negatives(tmp_path):
    cfg = DataConfig(num_negatives=0)
    split = make_split(
        tmp_path,
        [
            {"objects": [rect(1, 1, 2, 2, 5, 5)], "not_exhaustive": [3]},
            {"objects": [rect(2, 1, 2, 2, 5, 5)], "neg": [4]},
        ],
    )
    dataset = ConceptDataset(split, cfg, SIZE, train=False)
    assert prompts_of(dataset[0]) == ["red", "green", "cat"]  # blue: not exhaustive
    assert prompts_of(dataset[1]) == ["red", "cat"]  # only the verified-absent category


def test_crowd_objects_are_not_targets_and_crowd_only_categories_not_negatives(tmp_path):
    objects = [
        rect(1, 1, 2, 2, 10, 10),
        rect(2, 1, 20, 2, 10, 10, iscrowd=True),
        rect(3, 2, 40, 2, 8, 8, iscrowd=True),
    ]
    dataset = ConceptDataset(one_image(tmp_path, objects=objects), DataConfig(), SIZE, train=False)
    sample = dataset[0]
    assert prompts_of(sample) == ["red", "blue", "cat"]  # green: crowd only, neither
    assert sample["queries"][0]["boxes"].shape == (1, 4)


def test_box_only_objects_have_no_mask(tmp_path):
    objects = [
        rect(1, 1, 2, 2, 10, 10, segmentation=None),
        rect(2, 1, 20, 2, 10, 10, segmentation=[[1, 2, 3, 4]]),
        rect(3, 1, 30, 20, 10, 10),
    ]
    sample = ConceptDataset(one_image(tmp_path, objects=objects), DataConfig(), SIZE, train=False)[
        0
    ]
    red = sample["queries"][0]
    assert red["has_mask"].tolist() == [False, False, True]
    assert red["masks"][0] is None and red["masks"][2] is not None


def test_max_objects_keeps_the_largest_in_order(tmp_path):
    objects = [
        rect(1, 1, 0, 0, 4, 4),
        rect(2, 1, 10, 0, 12, 12),
        rect(3, 1, 30, 0, 8, 8),
        rect(4, 1, 40, 30, 2, 2),
    ]
    cfg = DataConfig(max_objects_per_query=2, num_negatives=0)
    sample = ConceptDataset(one_image(tmp_path, objects=objects), cfg, SIZE, train=False)[0]
    widths = sample["queries"][0]["boxes"][:, 2] * 64  # eval: x scaled by SIZE / 64 then / SIZE
    torch.testing.assert_close(widths, torch.tensor([12.0, 8.0]))


def test_generic_mode_one_query_for_all_objects(tmp_path):
    cfg = DataConfig(
        prompt_mode="generic",
        generic_prompt="shape",
        num_negatives=2,
        negative_phrases=["dog", "Shape"],
    )
    sample = ConceptDataset(one_image(tmp_path, objects=TWO_REDS_ONE_GREEN), cfg, SIZE, train=True)[
        0
    ]
    assert prompts_of(sample) == ["shape", "dog"]  # absent categories cannot be generic negatives
    query = sample["queries"][0]
    assert query["category_id"] == -1 and query["boxes"].shape == (3, 4)
    empty = ConceptDataset(make_split(tmp_path, [{}]), cfg, SIZE, train=False)[0]
    assert [(q["prompt"], q["is_positive"]) for q in empty["queries"]] == [("shape", False)]


def test_same_seed_epoch_index_gives_identical_samples(tmp_path):
    cfg = DataConfig(
        num_negatives=2, negative_phrases=["dog", "car"], min_resize_ratio=0.3, color_jitter=0.3
    )
    split = one_image(tmp_path, objects=TWO_REDS_ONE_GREEN)
    a, b = (ConceptDataset(split, cfg, SIZE, train=True, seed=5)[0] for _ in range(2))
    assert prompts_of(a) == prompts_of(b) and torch.equal(a["pixel_values"], b["pixel_values"])
    dataset = ConceptDataset(split, cfg, SIZE, train=True, seed=5)
    variants = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        variants.add((tuple(prompts_of(sample)), sample["pixel_values"].sum().item()))
    assert len(variants) > 1


def test_image_of_another_size_than_annotated_is_a_data_error(tmp_path):
    split = one_image(tmp_path, objects=[])
    split.images[0].width = 65
    with pytest.raises(DataError, match="width=65"):
        ConceptDataset(split, DataConfig(), SIZE, train=False)[0]


def test_bad_segmentation_names_the_annotation(tmp_path):
    bad = rect(7, 1, 2, 2, 5, 5, segmentation={"size": [10, 10], "counts": "0"})
    with pytest.raises(DataError, match="annotation id 7 field segmentation"):
        ConceptDataset(one_image(tmp_path, objects=[bad]), DataConfig(), SIZE, train=False)[0]


# Every DataConfig key the dataset/loader consumes, and proof that changing it changes the
# output: (key, base overrides, changed value). The base turns randomness off.
BASE = {
    "num_negatives": 0,
    "random_resize": True,
    "min_resize_ratio": 1.0,
    "horizontal_flip": 0.0,
    "color_jitter": 0.0,
}
KEY_CASES = [
    ("prompt_mode", {}, "generic"),
    ("prompts", {}, {"red": "crimson"}),
    ("generic_prompt", {"prompt_mode": "generic"}, "thing"),
    ("num_negatives", {}, 2),
    ("negative_phrases", {"num_negatives": 9}, ["dog"]),
    ("max_objects_per_query", {}, 1),
    ("random_resize", {}, False),
    ("min_resize_ratio", {}, 0.3),
    ("horizontal_flip", {}, 1.0),
    ("color_jitter", {}, 0.5),
    ("num_workers", {}, 2),
]


def observe(split, cfg):
    """What a config produces: per sample prompts, boxes, pixel checksum; and the loader."""
    dataset = ConceptDataset(split, cfg, SIZE, train=True, seed=1)
    seen = []
    for index in range(len(dataset)):
        sample = dataset[index]
        boxes = [q["boxes"].tolist() for q in sample["queries"]]
        seen.append((prompts_of(sample), boxes, round(sample["pixel_values"].sum().item(), 3)))
    loader = build_dataloader(split, cfg, SIZE, batch_size=1, train=True, seed=1)
    return seen, loader.num_workers


@pytest.mark.parametrize("key, base, changed", KEY_CASES, ids=[case[0] for case in KEY_CASES])
def test_every_data_key_changes_the_output(tmp_path, key, base, changed):
    split = make_split(tmp_path, [{"objects": TWO_REDS_ONE_GREEN}] * 3)
    # A non-uniform image, so that flips and jitter show in the pixels.
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(split.images[0].path)
    base_cfg = DataConfig(**{**BASE, **base})
    changed_cfg = base_cfg.model_copy(update={key: changed})
    assert observe(split, base_cfg) != observe(split, changed_cfg)


def test_key_table_covers_every_consumed_key():
    not_read_here = {"root", "annotation_file", "skip_invalid",  # the reader's and the CLI's
                     # the trainer's feature cache: tests/training/test_features.py
                     "cache_features", "cache_features_bytes", "cache_features_dir",
                     # the interactive task's samples: tests/data/test_interactive.py
                     "mask_prompt_probability", "center_click_probability",
                     # the video tracker's clips: tests/data/video/test_clips.py
                     "clip_frames", "max_objects_per_clip", "reverse_time_probability",
                     # several datasets: tests/training/test_mixture.py, tests/recipes/test_train_datasets.py
                     "datasets"}
    assert {case[0] for case in KEY_CASES} == set(DataConfig.model_fields) - not_read_here


def test_a_big_jpeg_is_decoded_at_reduced_size_to_the_same_training_tensor(tmp_path, monkeypatch):
    """Phone photos decoded in full cost ~10x the training work at 112 px: JPEGs are decoded
    by DCT scaling (PIL ``draft``) to no less than the training size, then resized as usual.
    EXIF orientation still applies; boxes stay in the annotated (full-size, upright) frame."""
    import numpy as np
    from PIL import JpegImagePlugin

    from sam3_lora.data.dataset import AUGMENT_STREAM, sample_generator
    from sam3_lora.data.images import open_image
    from sam3_lora.model.processing import image_to_tensor

    ys, xs = np.mgrid[0:1500, 0:2000]
    pixels = np.stack([xs % 256, ys % 256, (xs + ys) // 16 % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6   # stored landscape, shown portrait: 1500 x 2000
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    record = ImageRecord(1, "photo.jpg", tmp_path / "photo.jpg", 1500, 2000,
                         [rect(1, 1, 300, 400, 600, 800)])
    split = CocoSplit("train", tmp_path, tmp_path / "_annotations.coco.json", dict(CATEGORIES),
                      [record])
    drafts = []
    original_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size, *a: drafts.append(size) or original_draft(self, mode, size, *a))
    dataset = ConceptDataset(split, DataConfig(), 112, train=True)
    sample = dataset[0]
    assert drafts == [(112, 112)]

    full = image_to_tensor(np.array(open_image(record.path)))
    boxes = torch.tensor([record.objects[0].bbox], dtype=torch.float)
    reference, reference_boxes, geometry = dataset.transform(
        full, boxes, sample_generator(0, 0, 0, AUGMENT_STREAM))
    assert sample["geometry"] == geometry and geometry.orig_size == (2000, 1500)
    assert torch.equal(sample["queries"][0]["boxes"] * 112,
                       torch.cat([(reference_boxes[:, :2] + reference_boxes[:, 2:]) / 2,
                                  reference_boxes[:, 2:] - reference_boxes[:, :2]], -1))
    difference = (sample["pixel_values"] - reference).abs().mean().item()
    assert difference < 0.02   # normalised units (1.0 = 127.5 grey levels): under 2.6 levels
