"""YouTube-VIS files: reading videos and per-frame masks, and each check on a tiny file."""

import json
import os

import numpy as np
import pytest

from sam3_lora.data.rle import encode
from sam3_lora.data.video.checks import format_video_report, validate_vis_file
from sam3_lora.data.video.vis import load_vis_split
from sam3_lora.errors import DataError
from tests.data.video.folders import SIZE, boxes_mask, write_frame

WIDTH, HEIGHT = SIZE
SQUARE = [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0]]


def rle(boxes):
    return encode(boxes_mask(boxes).astype(bool))


def vis_document():
    """Two videos of 3 and 2 frames; a track with RLE, polygon and absent frames."""
    return {
        "videos": [
            {"id": 1, "width": WIDTH, "height": HEIGHT, "length": 3,
             "file_names": ["cat/00000.jpg", "cat/00001.jpg", "cat/00002.jpg"]},
            {"id": 2, "width": WIDTH, "height": HEIGHT,
             "file_names": ["dog/00000.jpg", "dog/00005.jpg"]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentations": [rle({1: (0, 0, 4, 4)}), SQUARE, None]},
            {"id": 2, "video_id": 2, "category_id": 2, "iscrowd": 0,
             "segmentations": [None, rle({1: (2, 2, 8, 8)})]},
        ],
    }


def write_vis(root, document=None):
    for video in (document or vis_document())["videos"]:
        for name in video["file_names"]:
            if "/" in name and ".." not in name and not name.startswith("/"):
                write_frame(root / "JPEGImages" / name)
    path = root / "train.json"
    path.write_text(json.dumps(document or vis_document()))
    return path


def codes(split):
    return sorted(problem.code for problem in split.problems)


def test_a_clean_file_reads_videos_categories_and_masks_per_frame(tmp_path):
    split = load_vis_split(write_vis(tmp_path))
    assert split.problems == []
    assert split.categories == {1: "cat", 2: "dog"}
    assert [(v.id, v.name, len(v.frame_paths)) for v in split.videos.values()] == \
        [(1, "cat", 3), (2, "dog", 2)]
    first = split.tracks[0]
    assert (first.video_id, first.category_id) == (1, 1)
    assert first.segmentations[0]["size"] == [HEIGHT, WIDTH]
    assert first.segmentations[1] == SQUARE and first.segmentations[2] is None
    report = validate_vis_file(tmp_path / "train.json")
    assert report.exit_code == 0
    assert "sequences: 2, frames: 5, masks: 3, objects: 2" in format_video_report(report)


@pytest.mark.parametrize("change, code, words", [
    (lambda d: d["annotations"][0]["segmentations"].__setitem__(
        0, encode(np.zeros((HEIGHT + 1, WIDTH), dtype=bool))),
     "rle_size_mismatch", "annotation id 1, frame 0: RLE size [13, 16]"),
    (lambda d: d["annotations"][0]["segmentations"].__setitem__(1, [[1, 1, 5, 5]]),
     "polygon_too_short", "annotation id 1, frame 1: polygon part 0 has 4 numbers"),
    (lambda d: d["annotations"][0]["segmentations"].pop(),
     "bad_length", "'segmentations' has 2 entries, not one per frame of video 1 (3)"),
    (lambda d: d["videos"][0].__setitem__("length", 4),
     "bad_length", "'length' is 4 but 'file_names' lists 3 frames"),
    (lambda d: d["annotations"][1].__setitem__("video_id", 9),
     "unknown_video", "video_id 9 is not a usable video"),
    (lambda d: d["annotations"][1].__setitem__("category_id", 7),
     "unknown_category", "category_id 7 is not in 'categories'"),
    (lambda d: d["annotations"][1].__setitem__("segmentations", [None, None]),
     "empty_track", "no mask on any frame"),
    (lambda d: d["videos"][1].__setitem__("width", WIDTH + 2),
     "size_mismatch", "frame 00000.jpg is 16 x 12, the video says 18 x 12"),
    (lambda d: d["videos"][1]["file_names"].append("dog/00010.jpg"),
     "missing_frame", "1 of its 3 frames are not in"),
    (lambda d: d["videos"][1]["file_names"].__setitem__(0, "../../secret.jpg"),
     "unsafe_path", "'../../secret.jpg' leads outside"),
    (lambda d: d["videos"][1].__setitem__("id", 1),
     "duplicate_id", "video id 1: several videos share this id"),
])
def test_each_rule_on_a_file_that_breaks_it(tmp_path, change, code, words):
    document = vis_document()
    write_vis(tmp_path, document)          # every frame of the clean file exists
    change(document)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(document))
    split = load_vis_split(path)
    assert code in codes(split), [p.message for p in split.problems]
    problem = next(p for p in split.problems if p.code == code)
    assert words in problem.message
    expected = "warning" if code == "empty_track" else "error"
    assert problem.severity == expected


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_frame_linked_outside_the_frames_folder_is_refused(tmp_path):
    path = write_vis(tmp_path / "vis")
    write_frame(tmp_path / "secret" / "x.jpg")
    frame = tmp_path / "vis" / "JPEGImages" / "dog" / "00005.jpg"
    frame.unlink()
    frame.symlink_to(tmp_path / "secret" / "x.jpg")
    split = load_vis_split(path)
    assert codes(split) == ["unknown_video", "unsafe_path"]   # video 2 and its annotation out
    assert list(split.videos) == [1]


def test_a_file_that_is_not_youtube_vis_is_one_line(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"coco.json: not a YouTube-VIS file .*'videos'"):
        load_vis_split(path)
    with pytest.raises(DataError, match="YouTube-VIS file not found"):
        load_vis_split(tmp_path / "none.json")


def test_the_frames_folder_can_be_given(tmp_path):
    path = write_vis(tmp_path)
    (tmp_path / "JPEGImages").rename(tmp_path / "frames")
    assert "missing_frame" in codes(load_vis_split(path))
    assert load_vis_split(path, tmp_path / "frames").problems == []
