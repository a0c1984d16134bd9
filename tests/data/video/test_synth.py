"""Synthetic clips: determinism, valid DAVIS output, and the hard cases they are built with."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.synth import SHAPES, parse_concepts, rasterize
from sam3_lora.data.video.checks import validate_video_dataset
from sam3_lora.data.video.layout import load_video_split
from sam3_lora.data.video.synth import (
    _clip_tracks,
    bouncing_path,
    davis_palette,
    render_frame,
    synthesize_video,
)
from sam3_lora.errors import DataError

SMALL = {"train": 2, "valid": 1}
TINY = {"frames": 5, "image_size": 64, "sequences_per_split": SMALL}


def all_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize_video(tmp_path / name, seed=seed, background=["noise", "stripes"], **TINY)
    first = all_bytes(tmp_path / "a")
    assert first == all_bytes(tmp_path / "b")
    assert all_bytes(tmp_path / "c") != first
    assert {p.parts[0] for p in first} == {"train", "valid"}


def test_output_passes_validate_and_meta_names_each_object(tmp_path):
    summary = synthesize_video(tmp_path / "d", objects_per_clip=(3, 3), **TINY)
    assert validate_video_dataset(tmp_path / "d").all_problems == []
    assert str(summary).startswith(f"wrote {tmp_path / 'd'}: train 2 sequences/10 frames/6 "
                                   "objects, valid 1 sequences/5 frames/3 objects")
    split = load_video_split(tmp_path / "d" / "train")
    meta = json.loads((tmp_path / "d" / "train" / "meta.json").read_text())["videos"]
    assert sorted(meta) == [s.name for s in split.sequences] == ["seq0000", "seq0001"]
    for sequence in split.sequences:
        objects = meta[sequence.name]["objects"]
        assert sorted(objects) == ["1", "2", "3"]
        for object_id, frames in sequence.objects.items():
            assert objects[str(object_id)]["frames"] == [sequence.frame_names[i] for i in frames]
            parse_concepts([objects[str(object_id)]["category"]])   # "<colour> <shape>"
        (distractor,) = meta[sequence.name]["distractors"]
        assert distractor == {"category": objects["1"]["category"], "look_alike_of": "1"}
        mask = Image.open(sequence.mask_paths["00000"])
        assert mask.mode == "P" and mask.getpalette()[:6] == davis_palette()[:6] == \
            [0, 0, 0, 128, 0, 0]


def test_sizes_vary_per_clip_within_the_range(tmp_path):
    synthesize_video(tmp_path / "d", frames=2, sequences_per_split={"train": 4},
                     image_size=((48, 40), (72, 60)), objects_per_clip=(1, 1))
    sizes = {s.size for s in load_video_split(tmp_path / "d" / "train").sequences}
    assert len(sizes) > 1 and all(48 <= w <= 72 and 40 <= h <= 60 for w, h in sizes)


def tracks_of(seed, frames=9, count=3, size=(96, 80)):
    rng = np.random.default_rng(seed)
    return _clip_tracks(rng, *size, frames, parse_concepts(["red circle", "blue square"]),
                        count, (0.1, 0.15), distractor=True)


def full_mask(track, t, size=(96, 80)):
    polygon = np.round(SHAPES[track.shape](*track.centers[t], track.radii[t], track.angles[t]), 2)
    return rasterize(polygon, size[1], size[0])


@pytest.mark.parametrize("seed", range(4))
def test_object_two_passes_over_object_one_at_mid_clip(seed):
    tracks = tracks_of(seed)
    one, two = (next(t for t in tracks if t.object_id == i) for i in (1, 2))
    np.testing.assert_allclose(two.centers[9 // 2], one.centers[9 // 2], atol=1e-6)
    assert tracks.index(two) > tracks.index(one)            # drawn over it
    backdrop = np.zeros((80, 96, 3), dtype=np.uint8)
    _, ids = render_frame(backdrop, tracks, 9 // 2)
    assert (ids == 1).sum() < full_mask(one, 9 // 2).sum()  # hidden in part


@pytest.mark.parametrize("seed", range(4))
def test_object_three_enters_half_visible_and_leaves(seed):
    three = next(t for t in tracks_of(seed) if t.object_id == 3)
    first, last = full_mask(three, 0), full_mask(three, -1)
    area = np.pi * three.radii[0] ** 2
    assert 0.2 * area < first.sum() < 0.8 * area      # half out of the frame
    assert last.sum() == 0                              # gone by the end


@pytest.mark.parametrize("seed", range(4))
def test_the_distractor_looks_like_object_one_and_is_background(seed):
    tracks = tracks_of(seed)
    one = next(t for t in tracks if t.object_id == 1)
    distractor = next(t for t in tracks if t.object_id == 0)
    assert (distractor.shape, distractor.color) == (one.shape, one.color)
    _, ids = render_frame(np.zeros((80, 96, 3), dtype=np.uint8), tracks, 0)
    above = tracks[tracks.index(distractor) + 1:]
    covered = np.zeros((80, 96), dtype=bool)
    for track in above:
        covered |= full_mask(track, 0)
    shown = full_mask(distractor, 0) & ~covered
    assert shown.sum() > 0 and np.all(ids[shown] == 0)


def test_appearance_changes_over_the_clip():
    tracks = tracks_of(0, count=3)
    assert any(not np.array_equal(t.shades[0], t.shades[-1]) for t in tracks)
    for track in tracks:
        assert 0.75 <= track.radii[-1] / track.radii[0] <= 1.3
        assert np.abs(track.shades[-1].astype(int) - track.shades[0]).max() <= 40


def test_bouncing_keeps_the_shape_inside_the_frame():
    radii = np.full(50, 10.0)
    centers = bouncing_path(np.array([50.0, 20.0]), np.array([7.0, -9.0]), radii, 100, 60)
    assert centers[:, 0].min() >= 10 and centers[:, 0].max() <= 90
    assert centers[:, 1].min() >= 10 and centers[:, 1].max() <= 50
    assert np.sign(np.diff(centers[:, 0])).min() < 0 < np.sign(np.diff(centers[:, 0])).max()


@pytest.mark.parametrize("options, message", [
    ({"frames": 1}, "1 frames per clip; give at least 2"),
    ({"objects_per_clip": (0, 2)}, "objects per clip 0..2"),
    ({"radius_range": (0.1, 0.7)}, "radius range 0.1..0.7"),
    ({"background": "fog"}, "unknown background 'fog'"),
    ({"sequences_per_split": {"val": 1}}, "unknown split 'val'"),
])
def test_bad_options_are_one_line_errors(tmp_path, options, message):
    with pytest.raises(DataError, match=message):
        synthesize_video(tmp_path / "d", **{**TINY, **options})
    assert not (tmp_path / "d").exists()


def test_a_clip_too_crowded_to_show_every_object_is_refused(tmp_path):
    with pytest.raises(DataError, match="could not place 6 objects all visible"):
        synthesize_video(tmp_path / "d", frames=2, image_size=24, objects_per_clip=(6, 6),
                         radius_range=(0.45, 0.5), min_visible_pixels=60,
                         sequences_per_split={"train": 1})


def test_a_failure_after_some_clips_leaves_nothing_behind(tmp_path, monkeypatch):
    from sam3_lora.data.video import synth

    written, write_clip = [], synth._write_clip

    def fail_on_the_third(*args):
        if len(written) == 2:
            raise DataError("synth: no room")
        written.append(args[1])
        return write_clip(*args)

    monkeypatch.setattr(synth, "_write_clip", fail_on_the_third)
    with pytest.raises(DataError, match="no room"):
        synthesize_video(tmp_path / "d", **TINY)
    assert written == ["seq0000", "seq0001"] and not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []       # no staging folder either


def test_a_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="folder is not empty"):
        synthesize_video(tmp_path / "d", **TINY)
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


def test_look_alikes_and_speed_range_change_the_clips(tmp_path):
    """``look_alikes`` look-alike distractors per clip, all of object 1's concept; a faster
    ``speed_range`` moves object 1 further per frame (measured on its mask centroid)."""
    synthesize_video(tmp_path / "many", look_alikes=3, objects_per_clip=(1, 1), **TINY)
    meta = json.loads((tmp_path / "many" / "train" / "meta.json").read_text())["videos"]
    for entry in meta.values():
        assert [d["category"] for d in entry["distractors"]] == [entry["objects"]["1"]["category"]] * 3

    def mean_step(folder):
        steps = []
        for sequence in load_video_split(folder / "train").sequences:
            centers = [np.argwhere(sequence.mask(t) == 1).mean(0) for t in range(len(sequence.frame_paths))
                       if (sequence.mask(t) == 1).any()]
            steps += [np.linalg.norm(b - a) for a, b in itertools.pairwise(centers)]
        return np.mean(steps)

    options = {"objects_per_clip": (1, 1), "distractor": False, "frames": 5, "image_size": 96,
               "sequences_per_split": {"train": 4}}
    synthesize_video(tmp_path / "slow", speed_range=(0.01, 0.01), **options)
    synthesize_video(tmp_path / "fast", speed_range=(0.1, 0.1), **options)
    assert mean_step(tmp_path / "fast") > 3 * mean_step(tmp_path / "slow")


@pytest.mark.parametrize(("option", "message"), [({"speed_range": (0.1, 0.05)}, "speed range 0.1..0.05"),
                                                 ({"look_alikes": -1}, "-1 look-alike distractors")])
def test_bad_motion_options_are_one_line(tmp_path, option, message):
    with pytest.raises(DataError, match=message) as error:
        synthesize_video(tmp_path / "d", **option, **TINY)
    assert "\n" not in str(error.value) and not (tmp_path / "d").exists()
