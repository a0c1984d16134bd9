"""validate_dataset / format_report on small Roboflow-style exports."""

import json

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.checks import format_report, validate_dataset
from sam3_lora.errors import DataError

ANNOTATION_FILE = "_annotations.coco.json"
# Roboflow's layout: an id-0 parent category named after the project, then the classes.
CATEGORIES = [{"id": 0, "name": "defects", "supercategory": "none"},
              {"id": 1, "name": "crack", "supercategory": "defects"},
              {"id": 2, "name": "hole", "supercategory": "defects"}]


def write_export_split(folder, file_names, annotations, categories=CATEGORIES, images=None):
    """A split folder: one 40 x 30 JPEG per file name, ids in order, and its COCO file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in file_names:
        Image.new("RGB", (40, 30), (70, 70, 70)).save(folder / name)
    if images is None:
        images = [{"id": i, "file_name": name, "width": 40, "height": 30}
                  for i, name in enumerate(file_names)]
    data = {"info": {"description": "Exported from roboflow.com"}, "images": images,
            "annotations": annotations, "categories": categories}
    (folder / ANNOTATION_FILE).write_text(json.dumps(data))
    return folder


def box(annotation_id, image_id, category_id, bbox=(2, 2, 10, 10), **extra):
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "bbox": list(bbox), "area": 100, "segmentation": [], "iscrowd": 0, **extra}


def write_clean_export(root):
    polygon = [[2, 2, 12, 2, 12, 12, 2, 12]]
    write_export_split(root / "train", ["t0.jpg", "t1.jpg", "t2.jpg"],
                       [box(0, 0, 1, segmentation=polygon), box(1, 0, 2), box(2, 1, 1)])
    write_export_split(root / "valid", ["v0.jpg"], [box(0, 0, 1)])
    write_export_split(root / "test", ["s0.jpg"], [box(0, 0, 2)])
    return root


def test_clean_export_exits_0_with_counts(tmp_path):
    checked = validate_dataset(str(write_clean_export(tmp_path)), ANNOTATION_FILE)
    assert checked.exit_code == 0
    out = format_report(checked)
    assert "OK: no problems found." in out
    report = validate_dataset(tmp_path)
    train = report.splits[0]
    assert [split.name for split in report.splits] == ["train", "valid", "test"]
    assert (train.num_images, train.num_objects, train.num_categories) == (3, 3, 2)
    assert train.objects_per_category == {"crack": 2, "hole": 1}
    assert train.images_without_objects == ["t2.jpg"]
    assert "crack: 2" in out and "images: 3 (1 without objects)" in out


def test_export_with_planted_problems_prints_each_and_exits_1(tmp_path):
    root = write_clean_export(tmp_path)
    (root / "train" / "broken.jpg").write_text("not an image")
    images = [{"id": 0, "file_name": "t0.jpg", "width": 40, "height": 30},
              {"id": 1, "file_name": "t1.jpg", "width": 41, "height": 30},  # size mismatch
              {"id": 2, "file_name": "lost.jpg", "width": 40, "height": 30},
              {"id": 3, "file_name": "../valid/v0.jpg", "width": 40, "height": 30},
              {"id": 4, "file_name": "broken.jpg", "width": 40, "height": 30}]
    write_export_split(root / "train", ["t0.jpg", "t1.jpg"], [
        box(0, 0, 1, segmentation=[[1, 1, 5, 5]]),                 # polygon_too_short
        box(1, 0, 1, bbox=(1, 1, 0, 4)),                           # zero_area_box
        box(1, 1, 2),                                              # duplicate_annotation_id
        box(3, 9, 1),                                              # unknown_image
        box(4, 0, 7),                                              # unknown_category
        box(5, 0, 1, bbox=(90, 90, 5, 5)),                         # box_outside_image
        box(6, 0, 1, segmentation={"size": [40, 30], "counts": [1200]}),  # rle_size_mismatch
        box(7, 0, 1, bbox=(1, 1, float("nan"), 4)),                # bad_number
    ], images=images)
    (root / "test" / ANNOTATION_FILE).write_text('{"images": [')  # truncated
    expected = {"polygon_too_short": "annotation id 0", "zero_area_box": "annotation id 1",
                "duplicate_annotation_id": "annotation id 1", "unknown_image": "annotation id 3",
                "unknown_category": "annotation id 4", "box_outside_image": "annotation id 5",
                "rle_size_mismatch": "annotation id 6", "bad_number": "annotation id 7",
                "image_size_mismatch": "image id 1", "missing_image": "image id 2",
                "unsafe_path": "image id 3", "unreadable_image": "image id 4",
                "unreadable_annotation_file": "truncated"}

    checked = validate_dataset(str(root), ANNOTATION_FILE)
    assert checked.exit_code == 1
    lines = format_report(checked).splitlines()
    for code, detail in expected.items():
        assert any(f" {code}: " in line and detail in line for line in lines), code
    # The warnings: the size mismatch, and no mask left in any split (no_masks).
    assert lines[-1].startswith("FAILED: 12 error(s), 2 warning(s)")


def test_errors_and_warnings_are_listed_apart_with_their_files(tmp_path):
    root = write_clean_export(tmp_path)
    write_export_split(root / "valid", ["v0.jpg"], [box(0, 0, 1, bbox=(30, 2, 20, 5)),
                                                    box(1, 0, 1, bbox=(1, 1, 0, 1))])
    text = format_report(validate_dataset(root))
    errors_at, warnings_at = text.index("errors (1):"), text.index("warnings (1):")
    assert errors_at < text.index("zero_area_box") < warnings_at < text.index("box_outside")
    assert f"(in valid/{ANNOTATION_FILE})" in text


def test_warnings_only_exit_0(tmp_path):
    root = write_clean_export(tmp_path)
    write_export_split(root / "valid", ["v0.jpg"], [box(0, 0, 1, bbox=(30, 2, 20, 5))])
    checked = validate_dataset(str(root), ANNOTATION_FILE)
    assert checked.exit_code == 0 and "OK with 1 warning(s)" in format_report(checked)


def test_missing_train_is_an_error(tmp_path):
    write_export_split(tmp_path / "valid", ["v0.jpg"], [box(0, 0, 1)])
    report = validate_dataset(tmp_path)
    assert report.exit_code == 1 and [p.code for p in report.errors] == ["missing_split"]


def test_split_folder_without_annotation_file(tmp_path):
    root = write_clean_export(tmp_path)
    (root / "test" / ANNOTATION_FILE).unlink()
    report = validate_dataset(root)
    assert [p.code for p in report.errors] == ["missing_annotation_file"]


def test_root_may_be_a_split_folder(tmp_path):
    folder = write_export_split(tmp_path / "mysplit", ["a.jpg"], [box(0, 0, 1)])
    report = validate_dataset(folder)
    assert [split.name for split in report.splits] == ["mysplit"] and report.exit_code == 0


def test_other_split_like_folders_are_flagged(tmp_path):
    root = write_clean_export(tmp_path)
    write_export_split(root / "val", ["x.jpg"], [box(0, 0, 1)])
    report = validate_dataset(root)
    assert [(p.code, p.severity) for p in report.problems] == [("ignored_folder", "warning")]


def test_categories_missing_from_train_are_flagged(tmp_path):
    root = write_clean_export(tmp_path)
    extra = [*CATEGORIES, {"id": 3, "name": "rust", "supercategory": "defects"}]
    write_export_split(root / "valid", ["v0.jpg"], [box(0, 0, 3)], categories=extra)
    (problem,) = validate_dataset(root).problems
    assert problem.code == "category_mismatch" and "rust" in problem.message


def test_custom_annotation_file_name(tmp_path, capsys):
    folder = write_export_split(tmp_path / "train", ["a.jpg"], [box(0, 0, 1)])
    (folder / ANNOTATION_FILE).rename(folder / "labels.json")
    assert validate_dataset(str(tmp_path), "labels.json").exit_code == 0


def test_truncated_image_found_by_full_decode(tmp_path):
    root = write_clean_export(tmp_path)
    noise = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = root / "train" / "t0.jpg"
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-400])
    assert [p.code for p in validate_dataset(root).errors] == ["unreadable_image"]
    assert validate_dataset(root, full_decode=False).errors == []


def test_missing_root_raises(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found: .*nowhere"):
        validate_dataset(str(tmp_path / "nowhere"), ANNOTATION_FILE)


def test_box_only_dataset_is_a_warning_naming_what_it_costs(tmp_path):
    root = write_clean_export(tmp_path)
    write_export_split(root / "train", ["t0.jpg"], [box(0, 0, 1)])   # the polygon was train's
    report = validate_dataset(root)
    assert report.exit_code == 0 and [(p.code, p.severity) for p in report.problems] == [
        ("no_masks", "warning")]
    assert "validate` scores boxes" in report.problems[0].message
    assert "objects: 1 in 2 categories, 0 with a mask" in format_report(report)
    assert validate_dataset(write_clean_export(tmp_path / "masked")).problems == []


@pytest.mark.parametrize("layout", [["data.yaml", "train/images/a.jpg", "train/labels/a.txt"],
                                    ["images/train/a.jpg", "labels/train/a.txt"],
                                    ["images/a.jpg", "labels/a.txt"]])
def test_yolo_folder_suggests_converting_it(tmp_path, layout):
    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0 0.5 0.5 0.2 0.2\n")
    report = validate_dataset(tmp_path)
    (problem,) = report.all_problems
    assert (problem.code, report.exit_code) == ("yolo_layout", 1)
    assert f"sam3-lora data convert yolo {tmp_path} {tmp_path}-coco" in problem.message


def test_skip_invalid_is_suggested_only_where_it_can_help(tmp_path):
    missing = format_report(validate_dataset(write_export_split(tmp_path / "a" / "valid", ["v.jpg"], [])
                                             .parent))
    assert "skip_invalid" not in missing.splitlines()[-1] and "cannot help" in missing
    root = write_clean_export(tmp_path / "b")
    write_export_split(root / "valid", ["v0.jpg"], [box(0, 0, 1, bbox=(1, 1, 0, 1))])
    assert "data.skip_invalid=true" in format_report(validate_dataset(root)).splitlines()[-1]


def test_an_image_over_the_pixel_limit_is_reported_from_its_header_and_training_refuses_it(
        tmp_path, monkeypatch):
    """A 100-megapixel PNG (the app refuses over 25 MP); bilevel, so the file stays small.
    Only its header is read: decoding it would take 100 MB and seconds."""
    from sam3_lora.data.coco import images as coco_images
    from sam3_lora.data.coco.split import check_split, load_coco_split

    root = write_clean_export(tmp_path)
    Image.new("1", (10_000, 10_000)).save(root / "train" / "big.png")
    document = json.loads((root / "train" / ANNOTATION_FILE).read_text())
    document["images"].append({"id": 9, "file_name": "big.png", "width": 10_000, "height": 10_000})
    (root / "train" / ANNOTATION_FILE).write_text(json.dumps(document))

    decoded = []
    original = coco_images.check_decodes
    monkeypatch.setattr(coco_images, "check_decodes",
                        lambda path: decoded.append(path.name) or original(path))
    report = validate_dataset(root)
    assert "big.png" not in decoded and "t0.jpg" in decoded
    (problem,) = report.errors
    assert problem.code == "image_too_large" and problem.image_id == 9
    assert "100.0 MP" in problem.message and "25 MP" in problem.message
    with pytest.raises(DataError, match="image_too_large|over the 25 MP limit"):
        check_split(load_coco_split(root / "train"), skip_invalid=False)


def test_valid_categories_whose_ids_and_names_disagree_with_train_are_one_error_each(tmp_path):
    write_clean_export(tmp_path)   # train: 1 crack, 2 hole
    swapped = [CATEGORIES[0], {"id": 1, "name": "hole", "supercategory": "defects"},
               {"id": 2, "name": "crack", "supercategory": "defects"},
               {"id": 5, "name": "dent", "supercategory": "defects"}]
    write_export_split(tmp_path / "valid", ["v0.jpg"], [box(0, 0, 1)], categories=swapped)
    report = validate_dataset(tmp_path)
    lines = [p.message for p in report.errors if p.code == "category_id_mismatch"]
    assert lines == [
        ("valid category id 1 is 'hole', but in train id 1 is 'crack' and 'hole' is id 2; "
        "give each category the same id and name in every split"),
        ("valid category id 2 is 'crack', but in train id 2 is 'hole' and 'crack' is id 1; "
        "give each category the same id and name in every split")]
    assert report.exit_code == 1
    assert [p.code for p in report.warnings] == ["category_mismatch"]   # 'dent': new, not a clash
    assert "skipping invalid items cannot help" in format_report(report)


def test_a_dataset_without_train_suggests_convert_split(tmp_path):
    write_export_split(tmp_path / "all", ["a.jpg"], [box(0, 0, 1)])
    (problem,) = validate_dataset(tmp_path).errors
    assert problem.code == "missing_split"
    assert f"sam3-lora data convert split {tmp_path / 'all'} {tmp_path}-split" in problem.message
