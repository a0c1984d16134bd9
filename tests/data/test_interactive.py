import json
import warnings

import pytest
import torch

from sam3_lora.config import DataConfig
from sam3_lora.data.coco.split import load_coco_split
from sam3_lora.data.interactive import ObjectDataset, build_object_loader, initial_prompts
from sam3_lora.data.prompts import center_click
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import DataError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 6}, image_size=112, seed=0)
    return root


def split_of(root):
    return load_coco_split(root / "train")


def test_one_sample_per_object_with_its_mask_and_prompts(shapes):
    split = split_of(shapes)
    dataset = ObjectDataset(split, DataConfig(), 112, train=True)
    assert len(dataset) == sum(len(r.objects) for r in split.images)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (3, 112, 112) and sample["mask"].shape == (112, 112)
    mask = sample["mask"]
    assert mask.any()
    x, y = sample["points"][0].long().tolist()
    assert mask[y, x] and sample["labels"].tolist() == [1]   # the click lands inside the object
    x1, _y1, _x2, y2 = sample["box"].tolist()
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    # A noisy box: each side within 10% of the mask's extent of the tight one.
    assert abs(x1 - cols.min()) <= 0.1 * (cols.max() - cols.min()) + 1e-4
    assert abs(y2 - rows.max()) <= 0.1 * (rows.max() - rows.min()) + 1e-4
    assert sample["kind"] in ("box", "click")   # mask prompts are off by default (SAM 2 on images)


def test_prompts_are_fixed_by_seed_and_epoch(shapes):
    split = split_of(shapes)

    def sample(seed, epoch):
        dataset = ObjectDataset(split, DataConfig(), 112, train=True, seed=seed)
        dataset.set_epoch(epoch)
        return dataset[1]

    first, again, other = sample(0, 0), sample(0, 0), sample(0, 1)
    for key in ("box", "points", "mask", "pixel_values"):
        assert torch.equal(first[key], again[key])
    assert first["prompt_seed"] == again["prompt_seed"] != other["prompt_seed"]


def test_mask_prompt_probability_chooses_mask_prompts(shapes):
    split = split_of(shapes)
    kinds = {p: [ObjectDataset(split, DataConfig(mask_prompt_probability=p), 112, train=True)[i]["kind"]
                 for i in range(8)] for p in (0.0, 1.0)}
    assert "mask" not in kinds[0.0] and set(kinds[1.0]) == {"mask"}


def test_center_click_probability_clicks_the_centre(shapes):
    split = split_of(shapes)
    dataset = ObjectDataset(split, DataConfig(center_click_probability=1.0), 112, train=True)
    for index in range(4):
        sample = dataset[index]
        assert torch.equal(sample["points"], center_click(sample["mask"][None])[0][0])


def test_a_batch_has_one_prompt_kind(shapes):
    loader = build_object_loader(split_of(shapes), DataConfig(), 112, batch_size=4, train=True)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 112, 112) and batch["masks"].shape == (4, 112, 112)
    assert batch["boxes"].shape == (4, 4) and batch["points"].shape == (4, 1, 2)
    assert batch["labels"].shape == (4, 1) and batch["kind"] in ("box", "click")
    assert isinstance(batch["prompt_seed"], int)


def test_an_empty_mask_gets_its_annotation_box_and_a_negative_click():
    prompts = initial_prompts(torch.zeros(16, 16, dtype=torch.bool), torch.tensor([2.0, 3.0, 4.0, 5.0]), 0.0,
                              torch.Generator().manual_seed(0))
    assert prompts["box"].tolist() == [2.0, 3.0, 4.0, 5.0] and prompts["labels"].tolist() == [0]


def _rewrite(root, change):
    path = root / "train" / "_annotations.coco.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_objects_without_masks_are_left_out_with_one_counted_warning(shapes, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(shapes, root)

    def strip(data):
        data["annotations"][0].pop("segmentation")
        data["annotations"][1]["iscrowd"] = 1

    _rewrite(root, strip)
    split = split_of(root)
    total = sum(len(r.objects) for r in split.images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = ObjectDataset(split, DataConfig(), 112, train=True)
    messages = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(messages) == 1 and "1 objects without a mask and 1 crowd" in messages[0]
    assert "split train" in messages[0] and len(dataset) == total - 2


def test_a_split_without_masks_is_one_line(shapes, tmp_path):
    import shutil

    root = tmp_path / "boxes"
    shutil.copytree(shapes, root)
    _rewrite(root, lambda data: [a.pop("segmentation") for a in data["annotations"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no object has a mask") as error:
            ObjectDataset(split_of(root), DataConfig(), 112, train=True)
    assert "\n" not in str(error.value)
