"""Synthetic shapes: determinism, both segmentation kinds, occlusion-exact masks."""

import json
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora.data import synth
from sam3_lora.data.synth import COLORS, compose_scene, scene_annotations, synthesize
from sam3_lora.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SMALL = {"train": 6, "valid": 2, "test": 2}


def all_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(root, split="train"):
    return json.loads((root / split / "_annotations.coco.json").read_text())


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize(tmp_path / name, images_per_split=SMALL, seed=seed,
                   background=["plain", "noise", "stripes"])
    first, second = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert first == second
    assert all_bytes(tmp_path / "c") != first
    assert {str(p.parent) for p in first} == {"train", "valid", "test"}


def test_writes_all_splits_with_the_same_concept_categories(tmp_path):
    summary = synthesize(tmp_path / "d", images_per_split=SMALL, shapes=("circle", "star"),
                         colors=("red", "blue"))
    names = ["red circle", "red star", "blue circle", "blue star"]
    for split, count in SMALL.items():
        document = load(tmp_path / "d", split)
        assert [c["name"] for c in document["categories"]] == names
        assert [c["id"] for c in document["categories"]] == [1, 2, 3, 4]
        assert len(document["images"]) == count == summary.images[split]
        assert len(document["annotations"]) == summary.objects[split]
    assert "train 6 images" in str(summary)


def test_output_reads_back_without_problems(tmp_path):
    coco = pytest.importorskip("sam3_lora.data.coco.split")
    synthesize(tmp_path / "d", images_per_split=SMALL, background=["noise", "gradient"],
               image_size=((60, 50), (90, 70)))
    for split in SMALL:
        assert coco.load_coco_split(tmp_path / "d" / split).problems == []


def test_both_polygons_and_rle_are_written_and_read_back_by_pycocotools(tmp_path):
    synthesize(tmp_path / "d", images_per_split={"train": 12}, objects_per_image=(3, 6))
    document = load(tmp_path / "d")
    kinds = {type(a["segmentation"]).__name__ for a in document["annotations"]}
    assert kinds == {"list", "dict"}
    coco = COCO(str(tmp_path / "d" / "train" / "_annotations.coco.json"))
    for annotation in document["annotations"]:
        mask = coco.annToMask(annotation)
        assert mask.sum() == annotation["area"] > 0
        x, y, w, h = annotation["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_each_mask_is_exactly_the_visible_part_of_its_shape():
    dropped = 0
    for index in range(30):
        rng = np.random.default_rng(index)
        concepts = [(1, "square", "red"), (2, "circle", "blue"), (3, "cross", "green")]
        scene = compose_scene(rng, 96, 80, concepts, ["noise"], (6, 6), (0.15, 0.4), 20)
        dropped += 6 - len(scene.objects)
        covered = np.zeros((80, 96), dtype=bool)
        for obj in reversed(scene.objects):
            assert not (obj.visible_mask & covered).any()  # visible parts never overlap
            assert (obj.visible_mask <= obj.full_mask).all()
            assert obj.visible_mask.sum() >= 20
            covered |= obj.visible_mask
        for obj, annotation in zip(scene.objects, scene_annotations(scene, 1, 1)):
            decoded = _decode(annotation["segmentation"], 80, 96)
            assert np.array_equal(decoded, obj.visible_mask)
            assert annotation["area"] == obj.visible_mask.sum()
            color = np.array(COLORS[{c: k for c, _, k in concepts}[obj.category_id]])
            pixels = scene.image[obj.visible_mask].astype(int)
            assert (pixels == pixels[0]).all()  # one flat shade per object
            assert np.abs(pixels[0] - color).max() <= 15
    assert dropped > 0  # heavy overlap hides some shapes, and those are not annotated


def _decode(segmentation, height, width):
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def test_image_size_range_and_varied_sizes(tmp_path):
    synthesize(tmp_path / "d", images_per_split={"train": 8}, image_size=((64, 48), (128, 96)))
    document = load(tmp_path / "d")
    sizes = {(i["width"], i["height"]) for i in document["images"]}
    assert len(sizes) > 1
    for image in document["images"]:
        assert 64 <= image["width"] <= 128 and 48 <= image["height"] <= 96
        with Image.open(tmp_path / "d" / "train" / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"])


def test_target_domain_shapes_backgrounds_and_explicit_concepts(tmp_path):
    summary = synthesize(tmp_path / "d", images_per_split={"train": 4, "test": 2},
                         concepts=["yellow star", "purple hexagon", "cyan cross"],
                         background=["stripes", "checker", "gradient"])
    assert summary.num_categories == 3 and set(summary.images) == {"train", "test"}
    assert not (tmp_path / "d" / "valid").exists()


def test_a_registered_shape_is_usable_at_once(tmp_path, monkeypatch):
    monkeypatch.setitem(synth.SHAPES, "bar", lambda cx, cy, r, a: np.array(
        [(cx - r, cy - r / 4), (cx + r, cy - r / 4), (cx + r, cy + r / 4), (cx - r, cy + r / 4)]))
    synthesize(tmp_path / "d", shapes=["bar"], colors=["black"], images_per_split={"train": 2})
    assert load(tmp_path / "d")["categories"][0]["name"] == "black bar"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"shapes": ["stra"]}, "unknown shape 'stra'"),
        ({"colors": ["teal"]}, "unknown colour 'teal'"),
        ({"background": "fog"}, "unknown background 'fog'"),
        ({"images_per_split": {"val": 2}}, "unknown split 'val'"),
    ],
)
def test_unknown_names_are_one_line_errors(tmp_path, kwargs, words):
    with pytest.raises(DataError, match=words) as error:
        synthesize(tmp_path / "d", **kwargs)
    assert "\n" not in str(error.value) and "choose from" in str(error.value)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty; choose an empty"):
        synthesize(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_hundreds_of_small_images_take_seconds(tmp_path):
    start = time.perf_counter()
    synthesize(tmp_path / "d", images_per_split={"train": 200, "valid": 50, "test": 50})
    assert time.perf_counter() - start < 15  # ~2 s on one core; slack for slow CI


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"objects_per_image": (3, 1)}, "objects per image 3..1"),
     ({"radius_range": (0.2, 0.7)}, "radius range 0.2..0.7")],
)
def test_impossible_ranges_are_refused(tmp_path, kwargs, words):
    with pytest.raises(DataError, match=words):
        synthesize(tmp_path / "d", **kwargs)
