"""``data validate`` on video folders: each rule on a tiny folder that breaks it."""

import json

import pytest

from sam3_lora.data.video.checks import (
    format_video_report,
    is_video_dataset,
    validate_video_dataset,
)
from sam3_lora.data.video.layout import read_meta
from sam3_lora.errors import DataError
from tests.data.video.folders import (
    TWO_OBJECTS,
    boxes_mask,
    write_clip,
    write_frame,
    write_mask,
)

ONE = {1: (0, 0, 4, 4)}


def codes(report):
    return sorted(problem.code for problem in report.all_problems)


def test_a_clean_clip_has_no_problem_and_is_counted(tmp_path):
    write_clip(tmp_path, "a", [ONE, {1: (1, 1, 5, 5), 2: (8, 8, 10, 10)}, ONE])
    write_clip(tmp_path, "b", TWO_OBJECTS)
    report = validate_video_dataset(tmp_path, protocol="youtube-vos")
    assert report.all_problems == [] and report.exit_code == 0
    (split,) = report.splits
    assert (split.num_sequences, split.num_frames, split.num_masks, split.num_objects) == \
        (2, 6, 6, 4)
    assert format_video_report(report).endswith("OK: no problems found.")


def test_a_mask_of_another_size_than_its_frame(tmp_path):
    write_clip(tmp_path, "a", [ONE, ONE])
    write_mask(tmp_path / "Annotations" / "a" / "00001.png", boxes_mask(ONE, size=(20, 12)))
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["size_mismatch"]
    assert "mask is 20 x 12 but its frame 00001.jpg is 16 x 12" in report.errors[0].message


def test_a_frame_of_another_size_than_the_first(tmp_path):
    write_clip(tmp_path, "a", [ONE, None])
    write_frame(tmp_path / "JPEGImages" / "a" / "00001.jpg", size=(16, 14))
    report = validate_video_dataset(tmp_path, protocol="youtube-vos")
    assert codes(report) == ["size_mismatch"]
    assert report.errors[0].file.endswith("00001.jpg")


def test_a_colour_mask_and_unreadable_files(tmp_path):
    write_clip(tmp_path, "a", [ONE, ONE, ONE])
    write_mask(tmp_path / "Annotations" / "a" / "00001.png", boxes_mask(ONE), mode="RGB")
    (tmp_path / "Annotations" / "a" / "00002.png").write_bytes(b"garbage")
    (tmp_path / "JPEGImages" / "a" / "00002.jpg").write_bytes(b"garbage")
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["mask_mode", "unreadable_frame", "unreadable_mask"]


def test_an_object_absent_from_the_first_annotated_frame_under_davis_only(tmp_path):
    write_clip(tmp_path, "a", [None, ONE, {1: (0, 0, 4, 4), 3: (9, 9, 12, 12)},
                               {3: (9, 9, 12, 12)}])
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["new_object"]
    message = report.errors[0].message
    assert "object 3 of sequence 'a' first appears on frame 00002, not on the first " \
        "annotated frame 00001" in message
    assert report.errors[0].file.endswith("00002.png")
    assert validate_video_dataset(tmp_path, protocol="youtube-vos").all_problems == []


def test_frames_without_a_mask_after_the_first_under_davis_only(tmp_path):
    write_clip(tmp_path, "a", [ONE, None, ONE, None])
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["missing_mask"]
    assert "2 frame(s) (00001, 00003) after the first annotated frame 00000" in \
        report.errors[0].message
    assert validate_video_dataset(tmp_path, protocol="youtube-vos").all_problems == []


def test_a_missing_frame_number_warns_and_youtube_vos_steps_do_not(tmp_path):
    write_clip(tmp_path / "gap", "a", [ONE] * 4, names=["00000", "00001", "00002", "00004"])
    report = validate_video_dataset(tmp_path / "gap")
    assert codes(report) == ["frame_gap"] and report.exit_code == 0
    assert "1 frame(s) (00003) are missing" in report.warnings[0].message
    write_clip(tmp_path / "every5", "a", [ONE] * 3, names=["00000", "00005", "00010"])
    assert validate_video_dataset(tmp_path / "every5").all_problems == []


def test_masks_without_any_object_warn(tmp_path):
    write_clip(tmp_path, "a", [{}, {255: (0, 0, 4, 4)}])     # a DAVIS 2016 style 0/255 mask
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["no_objects"] and report.exit_code == 0
    assert "store a binary mask's object as 1" in report.warnings[0].message


def test_layout_problems_are_reported_too(tmp_path):
    write_clip(tmp_path, "a", [ONE])
    write_mask(tmp_path / "Annotations" / "a" / "00009.png", boxes_mask(ONE))
    (tmp_path / "JPEGImages" / "empty").mkdir()
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["empty_sequence", "missing_frame"]


def test_a_dataset_root_needs_train_and_names_ignored_folders(tmp_path):
    write_clip(tmp_path / "valid", "a", [ONE])
    write_clip(tmp_path / "val", "a", [ONE])
    assert is_video_dataset(tmp_path) and not is_video_dataset(tmp_path / "val" / "JPEGImages")
    report = validate_video_dataset(tmp_path)
    assert [split.name for split in report.splits] == ["valid"]
    assert codes(report) == ["ignored_folder", "missing_split"]
    with pytest.raises(DataError, match="unknown video protocol 'mose'"):
        validate_video_dataset(tmp_path, protocol="mose")


def test_the_report_has_one_line_per_problem_and_a_summary(tmp_path):
    write_clip(tmp_path / "train", "a", [ONE, None])
    write_mask(tmp_path / "train" / "Annotations" / "a" / "00000.png", boxes_mask(ONE), "RGB")
    report = validate_video_dataset(tmp_path)
    text = format_video_report(report)
    lines = text.splitlines()
    problem_lines = [line for line in lines if line.lstrip().startswith("error ")]
    assert len(problem_lines) == 1
    assert problem_lines[0].strip().startswith("error mask_mode: mask ")
    assert problem_lines[0].endswith("(in train/Annotations/a/00000.png)")
    assert "sequences: 1, frames: 2, masks: 1, objects: 0" in text
    assert lines[-1] == "FAILED: 1 error(s), 0 warning(s). Fix the errors."
    assert report.exit_code == 1


def test_meta_json_categories_must_match_the_masks(tmp_path):
    write_clip(tmp_path, "a", [{1: (0, 0, 4, 4), 2: (8, 8, 12, 12)}])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {"a": {"objects": {"1": {"category": "cat"},
                                                              "2": {"category": "dog"}}}}}))
    assert validate_video_dataset(tmp_path).all_problems == []
    assert read_meta(tmp_path) == {"a": {1: "cat", 2: "dog"}}
    meta.write_text(json.dumps({"videos": {"a": {"objects": {"1": {"category": "cat"},
                                                              "3": {"category": "owl"}}}}}))
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["meta_mismatch"] and report.exit_code == 0
    assert "objects [2] have no category there and objects [3] are in no mask" in \
        report.warnings[0].message
    meta.write_text(json.dumps({"videos": {"a": {"objects": {"x": {"category": "cat"}}}}}))
    report = validate_video_dataset(tmp_path)
    assert codes(report) == ["unreadable_meta"]
    assert "video 'a' object 'x' needs an integer id" in report.errors[0].message
    meta.write_text("[1]")
    with pytest.raises(DataError, match="no top-level 'videos' object"):
        read_meta(tmp_path)
