"""Malformed annotation files end in DataError or listed Problems, never another exception.

A valid file covering every annotation form is mutated at random (any value anywhere replaced
by random JSON, keys deleted, the text truncated), then read, checked and validated. What is
read must also be safe downstream: boxes finite and inside the image, masks pycocotools can
rasterise.
"""

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.data.checks import format_report, validate_dataset
from sam3_lora.data.coco.split import check_split, load_coco_split
from sam3_lora.errors import DataError
from tests.json_fuzz import json_slots

# pycocotools' decode (used here only to prove masks are usable) warns under NumPy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ANNOTATION_FILE = "_annotations.coco.json"
WIDTH, HEIGHT = 8, 6
DIAGONAL_COUNTS = mask_utils.encode(np.asfortranarray(np.eye(HEIGHT, WIDTH, dtype=np.uint8))
                                    )["counts"].decode()

BASE = {
    "images": [
        {"id": 0, "file_name": "a.png", "width": WIDTH, "height": HEIGHT,
         "neg_category_ids": [3], "not_exhaustive_category_ids": [2]},
        {"id": 1, "file_name": "missing.png", "width": WIDTH, "height": HEIGHT},
    ],
    "annotations": [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 1, 4, 3], "area": 12,
         "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 4], [0, 0, 2, 0, 2, 2]]},
        {"id": 2, "image_id": 0, "category_id": 2, "iscrowd": 1,
         "segmentation": {"size": [HEIGHT, WIDTH], "counts": [7, 5, 36]}},
        {"id": 3, "image_id": 0, "category_id": 2, "segmentation": {
            "size": [HEIGHT, WIDTH], "counts": DIAGONAL_COUNTS}},
        {"id": 4, "image_id": 0, "category_id": 1, "bbox": [0, 0, 8, 6], "segmentation": []},
    ],
    "categories": [{"id": 0, "name": "all", "supercategory": "none"},
                   {"id": 1, "name": "crack", "supercategory": "all"},
                   {"id": 2, "name": "hole", "supercategory": "all"},
                   {"id": 3, "name": "rust", "supercategory": "all"}],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 6, 8])
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 1e-308])
    | st.text(max_size=8) | st.sampled_from(["", "..", "../a.png", "/etc/passwd", "a.png"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(
        st.sampled_from(["id", "size", "counts", "name", "x"]) | st.text(max_size=4),
        children, max_size=4),
    max_leaves=12,
)


numbers = (st.integers(-20, 20) | st.floats(-20, 20) | st.floats(allow_nan=True)
           | st.sampled_from([1e308, 2**64, -0.0]))
boxes = st.lists(numbers, min_size=3, max_size=5)
polygons = st.lists(st.lists(numbers, max_size=10), max_size=3)
rle_sizes = st.sampled_from([[HEIGHT, WIDTH], [WIDTH, HEIGHT], [HEIGHT], [0, 0]]) | json_values
rle_counts = (st.text(alphabet=[chr(c) for c in range(40, 120)], max_size=12)
              | st.lists(st.integers(-5, 60), max_size=8) | json_values)
rles = st.fixed_dictionaries({"size": rle_sizes, "counts": rle_counts})


@st.composite
def annotations(draw):
    """One annotation whose every field is plausible-looking or random."""
    field = {
        "id": st.integers(0, 3) | json_values,
        "image_id": st.sampled_from([0, 1, 7]) | json_values,
        "category_id": st.sampled_from([0, 1, 2, 9]) | json_values,
        "bbox": boxes | json_values,
        "segmentation": polygons | rles | json_values,
        "iscrowd": st.sampled_from([0, 1, True, 2]) | json_values,
        "area": numbers | json_values,
    }
    chosen = draw(st.lists(st.sampled_from(sorted(field)), unique=True, min_size=2))
    return {key: draw(field[key]) for key in chosen}


@st.composite
def mutated_documents(draw):
    holder = {"doc": copy.deepcopy(BASE)}
    for _ in range(draw(st.integers(1, 4))):
        container, key = draw(st.sampled_from(list(json_slots(holder["doc"], holder, "doc"))))
        if isinstance(container, dict) and container is not holder and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(json_values)
    return holder["doc"]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "train"
    folder.mkdir()
    Image.new("RGB", (WIDTH, HEIGHT), (50, 60, 70)).save(folder / "a.png")
    return folder


def _read_everything(folder):
    """Run every entry point; only DataError may escape, and what is read must be sane."""
    try:
        split = load_coco_split(folder)
    except DataError as error:
        assert "\n" not in str(error)
        return
    _assert_sane(split)
    for skip_invalid in (False, True):
        try:
            check_split(split, skip_invalid)
        except DataError as error:
            assert "\n" not in str(error)
    format_report(validate_dataset(folder, full_decode=False))


def _assert_sane(split):
    for problem in split.problems:
        assert problem.severity in ("error", "warning") and problem.code
        assert isinstance(problem.message, str) and "\n" not in problem.message
    assert len({image.id for image in split.images}) == len(split.images)
    for image in split.images:
        for record in image.objects:
            x, y, w, h = record.bbox
            assert all(math.isfinite(v) for v in record.bbox) and w > 0 and h > 0
            assert 0 <= x and x + w <= image.width and 0 <= y and y + h <= image.height
            assert record.category_id in split.categories
            assert math.isfinite(record.area) and record.area >= 0
            if record.segmentation is not None:  # downstream rasterises it with pycocotools
                assert _rasterise(record.segmentation, image).shape[:2] == (image.height,
                                                                           image.width)


def _rasterise(segmentation, image):
    """As pycocotools' COCO.annToMask: compressed RLE decodes as is, the rest converts first."""
    is_compressed = isinstance(segmentation, dict) and isinstance(segmentation["counts"], str)
    rle = (segmentation if is_compressed
           else mask_utils.frPyObjects(segmentation, image.height, image.width))
    return mask_utils.decode(rle)


FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_base_document_is_clean(split_dir):
    (split_dir / ANNOTATION_FILE).write_text(json.dumps(BASE))
    split = load_coco_split(split_dir)
    assert [p.code for p in split.problems] == ["missing_image"]
    assert len(split.images[0].objects) == 4


@FUZZ
@given(document=mutated_documents())
def test_mutated_documents(split_dir, document):
    (split_dir / ANNOTATION_FILE).write_text(json.dumps(document))
    _read_everything(split_dir)


@settings(FUZZ, max_examples=150)
@given(entries=st.lists(annotations(), min_size=1, max_size=4))
def test_random_annotation_fields(split_dir, entries):
    document = copy.deepcopy(BASE)
    document["annotations"] += entries
    (split_dir / ANNOTATION_FILE).write_text(json.dumps(document))
    _read_everything(split_dir)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_truncated_or_damaged_text(split_dir, data):
    text = json.dumps(data.draw(mutated_documents()))
    cut = data.draw(st.integers(0, len(text)))
    damaged = text[:cut] + data.draw(st.sampled_from(["", "}", "]]", "\x00", "NaN", "\ufffd"]))
    (split_dir / ANNOTATION_FILE).write_text(damaged, encoding="utf-8")
    _read_everything(split_dir)


@settings(FUZZ, max_examples=100)
@given(document=json_values)
def test_any_json_value_as_the_whole_file(split_dir, document):
    (split_dir / ANNOTATION_FILE).write_text(json.dumps(document))
    _read_everything(split_dir)


@settings(FUZZ, max_examples=50)
@given(raw=st.binary(max_size=64))
def test_random_bytes(split_dir, raw):
    (split_dir / ANNOTATION_FILE).write_bytes(raw)
    _read_everything(split_dir)
