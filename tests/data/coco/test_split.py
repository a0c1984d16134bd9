"""load_coco_split / check_split: every annotation form, every problem code, file-level errors."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.data.coco import images as coco_images
from sam3_lora.data.coco.split import check_split, load_coco_split
from sam3_lora.errors import DataError

ANNOTATION_FILE = "_annotations.coco.json"
WIDTH, HEIGHT = 40, 30
CATEGORIES = [{"id": 1, "name": "crack", "supercategory": "none"},
              {"id": 2, "name": "hole", "supercategory": "none"}]


def write_image(folder, name, size=(WIDTH, HEIGHT)):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def image_entry(image_id, file_name, size=(WIDTH, HEIGHT)):
    return {"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]}


def box_object(annotation_id, image_id=0, category_id=1, bbox=(2, 3, 10, 8), **extra):
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "bbox": list(bbox), **extra}


def write_split(folder, annotations=(), images=None, categories=None, **top_level):
    """A split folder with a.jpg (40 x 30) and its annotation file; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if images is None:
        write_image(folder, "a.jpg")
        images = [image_entry(0, "a.jpg")]
    data = {"images": images, "annotations": list(annotations),
            "categories": CATEGORIES if categories is None else categories, **top_level}
    (folder / ANNOTATION_FILE).write_text(json.dumps(data))
    return folder


def load(tmp_path, annotations=(), **kwargs):
    return load_coco_split(write_split(tmp_path / "train", annotations, **kwargs))


def objects_of(split):
    return {o.id: o for image in split.images for o in image.objects}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask):
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def rectangle_mask(top, left, bottom, right):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


# --- annotation forms -------------------------------------------------------------------


def test_clean_split_reads_images_objects_and_categories(tmp_path):
    split = load(tmp_path, [box_object(5)])
    assert split.name == "train" and split.problems == []
    assert split.categories == {1: "crack", 2: "hole"}
    (image,) = split.images
    assert (image.id, image.width, image.height) == (0, WIDTH, HEIGHT)
    assert image.path == tmp_path / "train" / "a.jpg"
    (record,) = image.objects
    assert record.bbox == [2.0, 3.0, 10.0, 8.0] and record.segmentation is None
    assert record.area == 80.0 and record.iscrowd is False


def test_multi_part_polygon_keeps_every_part(tmp_path):
    parts = [[1, 1, 5, 1, 5, 5, 1, 5], [10, 10, 20, 10, 20, 20]]
    split = load(tmp_path, [box_object(1, bbox=(1, 1, 19, 19), segmentation=parts, area=66)])
    record = objects_of(split)[1]
    assert record.segmentation == parts and record.area == 66.0 and split.problems == []


def test_polygon_without_bbox_gets_its_extent_and_area(tmp_path):
    parts = [[1, 1, 5, 1, 5, 5, 1, 5], [10, 10, 20, 10, 20, 20]]
    entry = {"id": 1, "image_id": 0, "category_id": 1, "segmentation": parts}
    record = objects_of(load(tmp_path, [entry]))[1]
    assert record.bbox == [1.0, 1.0, 19.0, 19.0]
    assert record.area == pytest.approx(16 + 50)


@pytest.mark.parametrize("encode", [compressed_rle, uncompressed_rle])
def test_rle_mask_without_bbox_gets_box_from_mask(tmp_path, encode):
    rle = encode(rectangle_mask(top=4, left=6, bottom=9, right=16))
    entry = {"id": 1, "image_id": 0, "category_id": 2, "segmentation": rle}
    split = load(tmp_path, [entry])
    record = objects_of(split)[1]
    assert split.problems == []
    assert record.bbox == [6.0, 4.0, 10.0, 5.0] and record.area == 50.0
    assert record.segmentation == rle


@pytest.mark.parametrize("segmentation", ["absent", None, [], [[]], {}])
def test_box_only_object_has_no_segmentation(tmp_path, segmentation):
    entry = box_object(1)
    if segmentation != "absent":
        entry["segmentation"] = segmentation
    split = load(tmp_path, [entry])
    assert objects_of(split)[1].segmentation is None and split.problems == []


def test_crowd_object_is_kept_and_marked(tmp_path):
    rle = uncompressed_rle(rectangle_mask(0, 0, 10, 10))
    split = load(tmp_path, [box_object(1, iscrowd=1, segmentation=rle, bbox=(0, 0, 10, 10)),
                            box_object(2, iscrowd=0)])
    assert objects_of(split)[1].iscrowd is True and objects_of(split)[2].iscrowd is False


ROBOFLOW_CATEGORIES = [{"id": 0, "name": "defects", "supercategory": "none"},
                       {"id": 1, "name": "crack", "supercategory": "defects"},
                       {"id": 2, "name": "defects", "supercategory": "defects"}]


def test_roboflow_empty_supercategory_is_dropped_quietly(tmp_path):
    # Roboflow single-class exports often reuse the dataset name: no duplicate-name warning.
    split = load(tmp_path, [box_object(1)], categories=ROBOFLOW_CATEGORIES)
    assert split.categories == {1: "crack", 2: "defects"} and split.problems == []


def test_id_zero_category_with_annotations_is_kept(tmp_path):
    split = load(tmp_path, [box_object(1, category_id=0)], categories=ROBOFLOW_CATEGORIES[:2])
    assert 0 in split.categories and objects_of(split)[1].category_id == 0


def test_id_zero_category_that_is_nobodys_parent_is_kept(tmp_path):
    split = load(tmp_path, [box_object(1)], categories=[{"id": 0, "name": "dog"}] + CATEGORIES)
    assert split.categories == {0: "dog", 1: "crack", 2: "hole"}


def test_lvis_image_lists_are_read(tmp_path):
    write_image(tmp_path / "train", "a.jpg")
    image = {**image_entry(0, "a.jpg"), "neg_category_ids": [2], "not_exhaustive_category_ids": [1]}
    split = load(tmp_path, [box_object(1)], images=[image])
    assert split.images[0].neg_category_ids == [2]
    assert split.images[0].not_exhaustive_category_ids == [1]
    assert split.problems == []


def test_image_without_objects_is_fine(tmp_path):
    split = load(tmp_path, [])
    assert split.images[0].objects == [] and split.problems == []


@pytest.mark.parametrize("absent", ["deleted", None])
def test_annotations_key_may_be_absent(tmp_path, absent):
    folder = tmp_path / "train"
    write_split(folder)
    data = json.loads((folder / ANNOTATION_FILE).read_text())
    del data["annotations"]
    if absent is None:
        data["annotations"] = None
    (folder / ANNOTATION_FILE).write_text(json.dumps(data))
    assert load_coco_split(folder).problems == []


def test_images_in_subfolders_and_name_argument(tmp_path):
    write_image(tmp_path / "s", "images/a.jpg")
    folder = write_split(tmp_path / "s", [], images=[image_entry(3, "images/a.jpg")])
    split = load_coco_split(folder, name="valid")
    assert split.name == "valid" and split.images[0].path == folder / "images" / "a.jpg"


def test_area_absent_is_computed_and_rounding_overshoot_clipped_silently(tmp_path):
    split = load(tmp_path, [box_object(1, bbox=(30.0, 20.0, 10.5, 10.5))])
    record = objects_of(split)[1]
    assert record.bbox == [30.0, 20.0, 10.0, 10.0] and record.area == 100.0
    assert split.problems == []


def test_custom_annotation_file_name(tmp_path):
    folder = write_split(tmp_path / "train", [box_object(1)])
    (folder / ANNOTATION_FILE).rename(folder / "labels.json")
    assert len(objects_of(load_coco_split(folder, "labels.json"))) == 1


# --- problem codes ----------------------------------------------------------------------

# Each case: annotations, extra write_split arguments, expected (code, severity), and the ids
# of the objects that must survive.
PROBLEM_CASES = {
    "annotation id missing": ([{"image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]}], {},
                              ("missing_key", "error"), set()),
    "no bbox and no mask": ([{"id": 1, "image_id": 0, "category_id": 1}], {},
                            ("missing_key", "error"), set()),
    "bbox three numbers": ([box_object(1, bbox=(1, 2, 3))], {}, ("wrong_type", "error"), set()),
    "bbox strings": ([box_object(1, bbox=("1", 2, 3, 4))], {}, ("wrong_type", "error"), set()),
    "id is a string": ([{**box_object(1), "id": "1"}], {}, ("wrong_type", "error"), set()),
    "image_id is a float": ([box_object(1, image_id=0.0)], {}, ("wrong_type", "error"), set()),
    "annotation not an object": ([[1, 2, 3], box_object(2)], {}, ("wrong_type", "error"), {2}),
    "segmentation a number": ([box_object(1, segmentation=7)], {}, ("wrong_type", "error"),
                              set()),
    "flat polygon": ([box_object(1, bbox=(1, 1, 8, 8), segmentation=[1, 1, 9, 1, 9, 9])], {},
                     ("wrong_type", "warning"), {1}),
    "NaN coordinate": ([box_object(1, bbox=(float("nan"), 1, 5, 5))], {},
                       ("bad_number", "error"), set()),
    "infinite coordinate": ([box_object(1, bbox=(1, 1, float("inf"), 5))], {},
                            ("bad_number", "error"), set()),
    "1e308 coordinate": ([box_object(1, bbox=(1e308, 1, 5, 5))], {}, ("bad_number", "error"),
                         set()),
    "huge polygon coordinate": ([box_object(1, segmentation=[[1, 1, 1e300, 1, 5, 5]])], {},
                                ("bad_number", "error"), set()),
    "id beyond 64 bits": ([box_object(2**70)], {}, ("bad_number", "error"), set()),
    "NaN area": ([box_object(1, area=float("nan"))], {}, ("bad_number", "warning"), {1}),
    "iscrowd 2": ([box_object(1, iscrowd=2)], {}, ("bad_value", "error"), set()),
    "duplicate annotation id": ([box_object(1), box_object(1, bbox=(0, 0, 4, 4))], {},
                                ("duplicate_annotation_id", "error"), {1}),
    "unknown image": ([box_object(1, image_id=99)], {}, ("unknown_image", "error"), set()),
    "unknown category": ([box_object(1, category_id=99)], {}, ("unknown_category", "error"),
                         set()),
    "polygon of 2 points": ([box_object(1, segmentation=[[1, 1, 9, 9]])], {},
                            ("polygon_too_short", "error"), set()),
    "one short part of two": ([box_object(1, bbox=(1, 1, 8, 8),
                                          segmentation=[[1, 1, 9, 1, 9, 9], [1, 1]])], {},
                              ("polygon_too_short", "warning"), {1}),
    "odd polygon": ([box_object(1, segmentation=[[1, 1, 9, 1, 9, 9, 4]])], {},
                    ("bad_polygon", "error"), set()),
    "RLE size not a pair": ([box_object(1, segmentation={"size": [30], "counts": "0"})], {},
                            ("bad_rle", "error"), set()),
    "RLE counts too short": ([box_object(1, segmentation={"size": [30, 40], "counts": [5, 5]})],
                             {}, ("bad_rle", "error"), set()),
    "RLE counts garbage": ([box_object(1, segmentation={"size": [30, 40], "counts": "~~\x01"})],
                           {}, ("bad_rle", "error"), set()),
    "RLE of another size": ([box_object(1, segmentation={"size": [40, 30], "counts": [1200]})],
                            {}, ("rle_size_mismatch", "error"), set()),
    "zero-width box": ([box_object(1, bbox=(1, 1, 0, 5))], {}, ("zero_area_box", "error"),
                       set()),
    "negative box": ([box_object(1, bbox=(1, 1, 5, -5))], {}, ("zero_area_box", "error"), set()),
    "box fully outside": ([box_object(1, bbox=(50, 1, 5, 5))], {},
                          ("box_outside_image", "error"), set()),
    "box partly outside": ([box_object(1, bbox=(30, 1, 20, 5))], {},
                           ("box_outside_image", "warning"), {1}),
    "empty mask and box": ([box_object(1, segmentation={"size": [30, 40], "counts": [1200]})],
                           {}, ("empty_mask", "warning"), {1}),
    "empty mask alone": ([{"id": 1, "image_id": 0, "category_id": 1,
                           "segmentation": {"size": [30, 40], "counts": [1200]}}], {},
                         ("empty_mask", "error"), set()),
    "category name not a string": ([box_object(1)], {"categories": [{"id": 1, "name": 5}]},
                                   ("wrong_type", "error"), set()),
    "category name missing": ([box_object(1)], {"categories": [{"id": 1}]},
                              ("missing_key", "error"), set()),
    "category name empty": ([box_object(1)], {"categories": [{"id": 1, "name": " "}]},
                            ("bad_value", "error"), set()),
    "duplicate category id": ([box_object(1)],
                              {"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]},
                              ("duplicate_category_id", "error"), set()),
    "duplicate category name": ([box_object(1)],
                                {"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]},
                                ("duplicate_category_name", "warning"), {1}),
    # Inconsistent annotations that used to pass as "OK".
    "category names equal up to case": ([box_object(1)], {"categories": [
        {"id": 1, "name": "Crack"}, {"id": 2, "name": " crack"}]},
        ("duplicate_category_name", "warning"), {1}),
    "polygon outside the image, box inside": (
        [box_object(1, segmentation=[[100, 100, 120, 100, 120, 120]])], {},
        ("mask_outside_image", "error"), set()),
    "box far from its polygon": ([box_object(1, bbox=(25, 15, 10, 10),
                                             segmentation=[[1, 1, 9, 1, 9, 9]])], {},
                                 ("box_mask_mismatch", "error"), set()),
    "polygon at 1e6 px, small box": ([box_object(1, segmentation=[[0, 0, 1e6, 0, 1e6, 1e6]])],
                                     {}, ("box_mask_mismatch", "error"), set()),
    "normalised polygon": ([box_object(1, segmentation=[[0.1, 0.1, 0.5, 0.1, 0.5, 0.5]])], {},
                           ("box_mask_mismatch", "error"), set()),
    "RLE far from its box": ([box_object(1, bbox=(25, 15, 10, 10), segmentation=compressed_rle(
        rectangle_mask(0, 0, 8, 8)))], {}, ("box_mask_mismatch", "error"), set()),
    "area 0": ([box_object(1, area=0)], {}, ("bad_area", "warning"), {1}),
    "area beyond the image": ([box_object(1, area=1e11)], {}, ("bad_area", "warning"), {1}),
}


@pytest.mark.parametrize("case", list(PROBLEM_CASES), ids=list(PROBLEM_CASES))
def test_problem_is_reported_with_its_code(tmp_path, case):
    annotations, extra, (code, severity), surviving = PROBLEM_CASES[case]
    split = load(tmp_path, annotations, **extra)
    found = [(p.code, p.severity) for p in split.problems]
    assert (code, severity) in found, found
    assert set(objects_of(split)) == surviving
    problem = next(p for p in split.problems if p.code == code)
    assert problem.file.endswith(ANNOTATION_FILE) and "\n" not in problem.message


def test_inconsistent_annotations_are_explained(tmp_path):
    split = load(tmp_path, [box_object(1, area=0), box_object(2, area=1e11),
                            box_object(3, segmentation=[[0.1, 0.1, 0.5, 0.1, 0.5, 0.5]])],
                 categories=[{"id": 1, "name": "Crack"}, {"id": 2, "name": "crack"}])
    assert [o.area for o in objects_of(split).values()] == [80.0, 80.0]   # recomputed
    messages = {p.code: p.message for p in split.problems}
    assert "normalised 0..1 coordinates?" in messages["box_mask_mismatch"]
    assert "more than the 40 x 30 image's 1200 pixels" in messages["bad_area"]
    assert "['Crack', 'crack']" in messages["duplicate_category_name"]


def test_polygon_sticking_far_out_with_its_box_is_clipped(tmp_path):
    polygon = [[0, 0, 1e6, 0, 1e6, 1e6]]
    split = load(tmp_path, [box_object(1, bbox=(0, 0, 1e6, 1e6), segmentation=polygon)])
    assert [(p.code, p.severity) for p in split.problems] == [("box_outside_image", "warning")]
    record = objects_of(split)[1]
    assert record.bbox == [0.0, 0.0, WIDTH, HEIGHT] and record.area == WIDTH * HEIGHT


def test_consistent_polygon_rle_and_box_objects_raise_nothing(tmp_path):
    rle = compressed_rle(rectangle_mask(top=4, left=6, bottom=9, right=16))
    split = load(tmp_path, [box_object(1, bbox=(6, 4, 10, 5), segmentation=rle),
                            box_object(2, bbox=(1.2, 0.8, 8, 8.4), segmentation=[[1, 1, 9, 1, 9, 9]])])
    assert split.problems == [] and set(objects_of(split)) == {1, 2}


def _images_case(tmp_path, images, files=("a.jpg",)):
    for name in files:
        write_image(tmp_path / "train", name)
    return load(tmp_path, [box_object(1)], images=images)


def test_missing_image_file(tmp_path):
    split = _images_case(tmp_path, [image_entry(0, "gone.jpg")], files=())
    (problem,) = [p for p in split.problems if p.code == "missing_image"]
    assert problem.severity == "error" and problem.image_id == 0 and "gone.jpg" in problem.message
    # Its annotation leaves with it, without a problem of its own.
    assert {p.code for p in split.problems} == {"missing_image", "empty_split"}


def test_unreadable_image_names_the_image_file(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "bad.jpg").write_text("not a jpeg")
    split = _images_case(tmp_path, [image_entry(0, "bad.jpg")], files=())
    (problem,) = [p for p in split.problems if p.code == "unreadable_image"]
    assert problem.file.endswith("bad.jpg") and problem.severity == "error"


def test_truncated_image_is_caught_only_with_full_decode(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    folder = tmp_path / "train"
    folder.mkdir()
    Image.fromarray(noise).save(folder / "a.jpg", quality=95)
    data = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data[: len(data) * 4 // 5])  # header intact, pixels cut
    write_split(folder, [], images=[image_entry(0, "a.jpg")])
    assert load_coco_split(folder, full_decode=False).problems == []
    codes = [p.code for p in load_coco_split(folder).problems]   # full decode: the default
    assert "unreadable_image" in codes


def test_duplicate_image_ids_leave_out_all_entries(tmp_path):
    split = _images_case(tmp_path, [image_entry(0, "a.jpg"), image_entry(0, "b.jpg")],
                         files=("a.jpg", "b.jpg"))
    (problem,) = [p for p in split.problems if p.code == "duplicate_image_id"]
    assert "a.jpg" in problem.message and "b.jpg" in problem.message
    assert split.images == []


def test_one_file_under_two_ids_is_a_warning(tmp_path):
    split = _images_case(tmp_path, [image_entry(0, "a.jpg"), image_entry(1, "a.jpg")])
    assert [p.code for p in split.problems] == ["duplicate_file_name"]
    assert len(split.images) == 2


def test_image_size_disagreeing_with_file_is_a_warning(tmp_path):
    split = _images_case(tmp_path, [image_entry(0, "a.jpg", size=(30, 40))])
    (problem,) = split.problems
    assert (problem.code, problem.severity) == ("image_size_mismatch", "warning")
    assert "swapped" in problem.message
    assert (split.images[0].width, split.images[0].height) == (WIDTH, HEIGHT)


@pytest.mark.parametrize("bad_size", [{"width": "40"}, {"width": float("nan")}, {"height": None}])
def test_bad_image_size_fields_are_warnings(tmp_path, bad_size):
    split = _images_case(tmp_path, [{**image_entry(0, "a.jpg"), **bad_size}])
    assert [p.severity for p in split.problems] == ["warning"] and len(split.images) == 1


@pytest.mark.parametrize("file_name", ["../outside.jpg", "sub/../../outside.jpg",
                                       "..\\outside.jpg", "/etc/passwd", "C:\\outside.jpg",
                                       "C:outside.jpg", "a\x00.jpg"])
def test_file_names_escaping_the_folder_are_refused_unopened(tmp_path, monkeypatch, file_name):
    write_image(tmp_path, "outside.jpg")  # a real, readable image outside train/
    touched = []
    real_isfile = os.path.isfile

    def spy_isfile(path):
        if not str(path).endswith(ANNOTATION_FILE):
            touched.append(path)
        return real_isfile(path)

    monkeypatch.setattr(coco_images, "image_size", lambda path: touched.append(path))
    monkeypatch.setattr(os.path, "isfile", spy_isfile)
    split = _images_case(tmp_path, [image_entry(0, file_name)], files=())
    assert split.problems[0].code == "unsafe_path"
    assert split.images == [] and touched == []


def test_lvis_list_problems_are_warnings(tmp_path):
    image = {**image_entry(0, "a.jpg"), "neg_category_ids": [1, 77],
             "not_exhaustive_category_ids": "all"}
    split = _images_case(tmp_path, [image])
    codes = sorted((p.code, p.severity) for p in split.problems)
    assert codes == [("negative_has_objects", "warning"), ("unknown_category", "warning"),
                     ("wrong_type", "warning")]
    assert split.images[0].neg_category_ids == []


def test_split_without_usable_image(tmp_path):
    split = load(tmp_path, [], images=[])
    assert [(p.code, p.severity) for p in split.problems] == [("empty_split", "error")]


def test_problem_messages_name_the_ids(tmp_path):
    split = load(tmp_path, [box_object(41, bbox=(1, 1, 0, 5))])
    (problem,) = split.problems
    assert "annotation id 41" in problem.message
    assert (problem.annotation_id, problem.image_id) == (41, 0)


# --- the annotation file itself ---------------------------------------------------------

FILE_CASES = {
    "empty": (b"", "empty"),
    "not json": (b"{'images': []}", "not valid JSON"),
    "truncated": (b'{"images": [{"id": 1, "file_na', "truncated"),
    "a list": (b"[]", "not a COCO object"),
    "no images": (b'{"annotations": [], "categories": []}', "'images' is missing"),
    "categories not a list": (b'{"images": [], "categories": {}}', "'categories' is {}"),
    "not utf-8": (b'{"images": "\xff\xfe"}', "not UTF-8"),
    "deep nesting": (b"[" * 100000 + b"]" * 100000, "cannot be read as JSON"),
    "5000-digit number": (b'{"images": [' + b"1" * 5000 + b"]}", "cannot be read as JSON"),
}


@pytest.mark.parametrize("case", list(FILE_CASES), ids=list(FILE_CASES))
def test_unusable_annotation_file_raises_one_line(tmp_path, case):
    content, expected = FILE_CASES[case]
    (tmp_path / ANNOTATION_FILE).write_bytes(content)
    with pytest.raises(DataError, match=expected) as raised:
        load_coco_split(tmp_path)
    assert ANNOTATION_FILE in str(raised.value) and "\n" not in str(raised.value)


def test_missing_annotation_file_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="annotation file not found.*data.annotation_file"):
        load_coco_split(tmp_path)


def test_byte_order_mark_is_accepted(tmp_path):
    folder = write_split(tmp_path / "train", [box_object(1)])
    path = folder / ANNOTATION_FILE
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(objects_of(load_coco_split(folder))) == 1


# --- check_split ------------------------------------------------------------------------


def _split_with_errors(tmp_path):
    return load(tmp_path, [box_object(1), box_object(2, bbox=(1, 1, 0, 0)),
                           box_object(3, image_id=99)])


def test_check_split_refuses_errors_in_one_line(tmp_path):
    with pytest.raises(DataError) as raised:
        check_split(_split_with_errors(tmp_path), skip_invalid=False)
    message = str(raised.value)
    assert message.startswith("2 errors in ") and "annotation id 2" in message
    assert "sam3-lora data validate" in message and "data.skip_invalid=true" in message
    assert "\n" not in message


def test_check_split_skips_and_lists_every_bad_item(tmp_path, caplog):
    split = _split_with_errors(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sam3_lora.data.coco.split"):
        checked = check_split(split, skip_invalid=True)
    assert set(objects_of(checked)) == {1}
    skipped = [record.getMessage() for record in caplog.records]
    assert len(skipped) == 2 and all("skipped" in line for line in skipped)
    assert any("annotation id 2" in line for line in skipped)
    assert any("annotation id 3" in line for line in skipped)


def test_check_split_passes_a_clean_split(tmp_path):
    split = load(tmp_path, [box_object(1)])
    assert check_split(split, skip_invalid=False) is split


def test_check_split_refuses_a_split_with_nothing_left(tmp_path):
    split = load(tmp_path, [], images=[image_entry(0, "gone.jpg")])
    with pytest.raises(DataError, match="no usable image"):
        check_split(split, skip_invalid=True)


def test_training_skips_a_truncated_image_only_when_told(tmp_path, caplog, capsys):
    """Training read headers only, then stopped at the first batch holding a truncated file,
    even with --skip-invalid. It now finds the file before training starts."""
    from sam3_lora.cli.main import main
    from sam3_lora.data.synth import synthesize
    from tests.conftest import TINY_CONFIG

    synthesize(tmp_path / "data", images_per_split={"train": 4, "valid": 2}, image_size=112, seed=0)
    victim = tmp_path / "data" / "train" / "000001.png"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size * 3 // 5])
    command = ["train", "--config", str(TINY_CONFIG), f"data.root={tmp_path / 'data'}",
               "training.max_steps=2", "training.batch_size=2", "training.report_to=[]"]
    assert main([*command, f"output.dir={tmp_path / 'refused'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: 1 error in ") and str(victim) in error and "truncated" in error
    assert not (tmp_path / "refused" / "last").exists()
    with caplog.at_level(logging.WARNING, logger="sam3_lora.data.coco.split"):
        assert main([*command, f"output.dir={tmp_path / 'run'}", "--skip-invalid"]) == 0
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        (f"skipped (data.skip_invalid=true): error: {victim}: image id 2 (000001.png): cannot read "
        f"image {victim}: image file is truncated; re-export or replace the file, or remove it from "
        "the annotation file")]
    assert (tmp_path / "run" / "last" / "adapter_model.safetensors").is_file()
