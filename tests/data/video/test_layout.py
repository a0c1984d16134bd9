"""The DAVIS / YouTube-VOS layout reader: sequences, lazy frames and masks, safe paths."""

import os

import numpy as np
import pytest

from sam3_lora.data.video.layout import (
    NotAnIndexMask,
    frame_order,
    is_video_split,
    load_video_split,
    object_ids,
    read_index_mask,
)
from sam3_lora.errors import DataError
from tests.data.video.folders import (
    SIZE,
    TWO_OBJECTS,
    boxes_mask,
    write_clip,
    write_frame,
    write_mask,
)


def codes(split):
    return [problem.code for problem in split.problems]


def test_a_sequence_lists_its_frames_in_order_and_where_each_object_appears(tmp_path):
    write_clip(tmp_path, "walk", TWO_OBJECTS + [None])
    split = load_video_split(tmp_path)
    assert split.problems == []
    (sequence,) = split.sequences
    assert sequence.name == "walk"
    assert sequence.frame_names == ["00000", "00001", "00002", "00003"]
    assert sequence.annotated_frames == [0, 1, 2]
    assert sequence.size == SIZE
    assert sequence.objects == {1: [0, 1], 2: [0, 2]}
    assert sequence.frame(3).mode == "RGB" and sequence.frame(3).size == SIZE
    assert sequence.mask(3) is None
    np.testing.assert_array_equal(sequence.mask(1), boxes_mask(TWO_OBJECTS[1]))


def test_numbered_frames_sort_as_numbers_and_every_folder_is_a_sequence(tmp_path):
    write_clip(tmp_path, "b", [{1: (0, 0, 2, 2)}] * 3, names=["9", "10", "8"])
    write_clip(tmp_path, "a", [{1: (0, 0, 2, 2)}])
    split = load_video_split(tmp_path)
    assert [s.name for s in split.sequences] == ["a", "b"]
    assert split.sequences[1].frame_names == ["8", "9", "10"]
    assert sorted(["x.jpg", "10.jpg", "2.jpg"], key=frame_order) == ["2.jpg", "10.jpg", "x.jpg"]


def test_void_and_background_are_no_objects(tmp_path):
    ids = boxes_mask({3: (0, 0, 4, 4), 255: (5, 5, 9, 9)})
    assert object_ids(ids) == [3]
    path = write_mask(tmp_path / "m.png", ids, mode="L")
    np.testing.assert_array_equal(read_index_mask(path), ids)


def test_a_colour_mask_is_refused_naming_the_file_and_the_fix(tmp_path):
    path = write_mask(tmp_path / "m.png", boxes_mask({1: (0, 0, 4, 4)}), mode="RGB")
    with pytest.raises(NotAnIndexMask, match=r"m\.png is a 'RGB' image.*palette \('P'\)"):
        read_index_mask(path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read mask .*bad\.png.*re-export"):
        read_index_mask(tmp_path / "bad.png")


def test_a_sequence_list_picks_sequences_and_names_the_unknown_ones(tmp_path):
    for name in ("a", "b"):
        write_clip(tmp_path, name, [{1: (0, 0, 2, 2)}])
    listed = tmp_path / "ImageSets" / "val.txt"
    listed.parent.mkdir()
    listed.write_text("b\n\nghost\n")
    split = load_video_split(tmp_path, image_set=listed)
    assert [s.name for s in split.sequences] == ["b"]
    assert codes(split) == ["unknown_sequence"]
    assert "'ghost'" in split.problems[0].message
    with pytest.raises(DataError, match="cannot read the sequence list .*none.txt"):
        load_video_split(tmp_path, image_set=tmp_path / "none.txt")


def test_a_listed_name_climbing_out_is_refused_before_any_file_is_touched(tmp_path):
    root = tmp_path / "davis"
    write_clip(root, "a", [{1: (0, 0, 2, 2)}])
    write_clip(tmp_path / "elsewhere", "x", [{1: (0, 0, 2, 2)}])
    listed = tmp_path / "list.txt"
    listed.write_text("../../elsewhere/JPEGImages/x\n/etc\n")
    split = load_video_split(root, image_set=listed)
    assert split.sequences == []
    assert codes(split) == ["unsafe_path", "unsafe_path"]
    assert "leads outside" in split.problems[0].message


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symbolic_links_leading_outside_the_root_are_refused(tmp_path):
    root, outside = tmp_path / "davis", tmp_path / "outside"
    write_clip(root, "fine", [{1: (0, 0, 2, 2)}, {1: (0, 0, 2, 2)}])
    write_clip(outside, "secret", [{1: (0, 0, 2, 2)}])
    # a whole sequence folder linked out, and one frame file linked out
    (root / "JPEGImages" / "linked").symlink_to(outside / "JPEGImages" / "secret")
    (root / "JPEGImages" / "fine" / "00002.jpg").symlink_to(
        outside / "JPEGImages" / "secret" / "00000.jpg")
    # a link that stays inside the root is followed
    (root / "Annotations" / "fine" / "00001.png").unlink()
    (root / "Annotations" / "fine" / "00001.png").symlink_to(
        root / "Annotations" / "fine" / "00000.png")
    split = load_video_split(root)
    assert [s.name for s in split.sequences] == ["fine"]
    assert split.sequences[0].frame_names == ["00000", "00001"]
    assert split.sequences[0].annotated_frames == [0, 1]
    unsafe = [p.file for p in split.problems if p.code == "unsafe_path"]
    assert sorted(os.path.basename(f) for f in unsafe) == ["00002.jpg", "linked"]


def test_missing_folders_empty_sequences_and_masks_without_frames(tmp_path):
    write_frame(tmp_path / "JPEGImages" / "a" / "00000.jpg")
    assert is_video_split(tmp_path)     # a video split missing its masks, said so below
    split = load_video_split(tmp_path)
    assert codes(split) == ["missing_folder"]
    assert "Annotations" in split.problems[0].message
    write_mask(tmp_path / "Annotations" / "a" / "00007.png", boxes_mask({1: (0, 0, 2, 2)}))
    write_mask(tmp_path / "Annotations" / "orphan" / "00000.png", boxes_mask({1: (0, 0, 2, 2)}))
    (tmp_path / "JPEGImages" / "hollow").mkdir()
    split = load_video_split(tmp_path)
    assert split.sequences == []
    assert sorted(codes(split)) == ["empty_sequence", "empty_sequence", "missing_frame",
                                    "missing_frame"]
    with pytest.raises(DataError, match="video dataset folder not found"):
        load_video_split(tmp_path / "nowhere")


def test_davis_resolution_level_is_found(tmp_path):
    write_clip(tmp_path / "tmp", "bear", [{1: (0, 0, 2, 2)}])
    for folder in ("JPEGImages", "Annotations"):
        (tmp_path / folder).mkdir()
        (tmp_path / "tmp" / folder).rename(tmp_path / folder / "480p")
    split = load_video_split(tmp_path)
    assert split.problems == [] and [s.name for s in split.sequences] == ["bear"]
    assert is_video_split(tmp_path) and not is_video_split(tmp_path / "JPEGImages")
