"""YouTube-VIS annotation files: concepts followed through videos, for the detector.

The format (YouTube-VIS 2019/2021, OVIS)::

    {"videos": [{"id": 1, "width": W, "height": H, "length": T,
                 "file_names": ["SEQ/00000.jpg", ...]}],            relative to FRAMES_ROOT
     "categories": [{"id": 1, "name": "person"}],
     "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0,
                      "segmentations": [RLE | polygons | null, ...]}]}   one per frame

``FRAMES_ROOT`` is the folder the ``file_names`` are relative to (``JPEGImages/`` beside the
file by default, as YouTube-VIS 2021 ships it). Every per-frame segmentation is checked as
the COCO reader checks one (``data.coco.objects``: polygons of at least 3 points, RLE of the
video's [height, width] whose counts cover it exactly); ``null`` means the instance is not on
that frame. Frames are read for their header only (existence, size). A ``file_name`` that
leads outside FRAMES_ROOT (absolute, ``..``, or a link out) is refused and never opened.

================  =======  ============================================================
code              level    when
================  =======  ============================================================
(COCO's codes)    error    ids, names and sizes (``missing_key``, ``wrong_type``,
                           ``duplicate_category_id``...), per-frame ``bad_rle``,
                           ``rle_size_mismatch``, ``polygon_too_short``
unsafe_path       error    a ``file_name`` leading outside FRAMES_ROOT (the video is
                           left out)
missing_frame     error    ``file_names`` naming files that do not exist (one line a
                           video)
size_mismatch     error    a frame whose size is not the video's width x height
bad_length        error    ``length`` differs from the count of ``file_names``, or an
                           annotation's ``segmentations`` from the video's frame count
duplicate_id      error    two videos, or two annotations, with one id (all left out)
unknown_video     error    an annotation whose ``video_id`` is not in ``videos``
unknown_category  error    an annotation whose ``category_id`` is not in ``categories``
empty_track       warning  an annotation with no mask on any frame
================  =======  ============================================================
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_lora.data.coco.fields import Findings, Invalid, Reporter, describe, get_id, get_size
from sam3_lora.data.coco.objects import read_segmentation
from sam3_lora.data.coco.split import parse_categories, read_json
from sam3_lora.data.images import image_size
from sam3_lora.data.records import HasProblems, ImageRecord, Problem
from sam3_lora.data.video.layout import FRAMES_DIR
from sam3_lora.errors import DataError
from sam3_lora.files import inside_folder


@dataclass
class VisVideo:
    """One video of the file: its frames in the order listed."""

    id: int
    width: int
    height: int
    frame_paths: list[Path]

    @property
    def name(self) -> str:
        """The folder of its first frame (YouTube-VIS names frames ``SEQ/00000.jpg``)."""
        return self.frame_paths[0].parent.name


@dataclass
class VisTrack:
    """One instance through one video."""

    id: int
    video_id: int
    category_id: int
    segmentations: list[Any]
    """Per frame: checked polygons (list of flat lists), an RLE dict, or None (absent)."""
    iscrowd: bool = False


@dataclass
class VisSplit(HasProblems):
    """A parsed YouTube-VIS file: usable videos, categories, tracks, and problems found."""

    annotation_path: Path
    frames_root: Path
    categories: dict[int, str]
    videos: dict[int, VisVideo] = field(default_factory=dict)
    tracks: list[VisTrack] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def load_vis_split(annotation_file: str | Path, frames_root: str | Path | None = None
                   ) -> VisSplit:
    """Read and check a YouTube-VIS file (see the module docstring). ``frames_root``
    defaults to ``JPEGImages/`` beside the file. Raises ``DataError`` when the file is not
    a YouTube-VIS object at all; every other problem is in ``problems`` and its item is
    left out (errors) or kept (warnings)."""
    path = Path(annotation_file)
    if not os.path.isfile(path):
        raise DataError(f"YouTube-VIS file not found: {path}; give the annotation JSON")
    data = read_json(path, "the annotations")
    _check_top_level(data, path)
    root = Path(frames_root) if frames_root is not None else path.parent / FRAMES_DIR
    findings = Findings(str(path))
    categories, _ = parse_categories(data["categories"], findings)
    split = VisSplit(path, root, categories)
    split.videos = _parse_videos(data["videos"], root, findings)
    split.tracks = _parse_tracks(data.get("annotations") or [], split, findings)
    split.problems = findings.problems
    return split


def _check_top_level(data: Any, path: Path) -> None:
    lists = ("videos", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in lists) \
            or not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: not a YouTube-VIS file (needs top-level 'videos' and "
                        "'categories' lists, 'annotations' a list or absent); is it the right "
                        "file? (a COCO dataset is validated by its folder)")


def _repeated_ids(entries: list, findings: Findings, kind: str, message: str) -> set:
    """The ``id`` values several ``entries`` share, each reported once as ``duplicate_id``
    ("KIND id N": ``message``); entries of those ids are to be left out."""
    ids = [entry.get("id") if isinstance(entry, dict) else None for entry in entries]
    repeated = {i for i, n in Counter(ids).items() if n > 1 and i is not None}
    for repeated_id in sorted(repeated, key=str):
        findings.about(f"{kind} id {describe(repeated_id)}").error("duplicate_id", message)
    return repeated


def _parse_videos(entries: list, root: Path, findings: Findings) -> dict[int, VisVideo]:
    """``videos`` entries -> usable videos by id (duplicated ids left out, with an error)."""
    repeated = _repeated_ids(entries, findings, "video", "several videos share this id; all are left out "
                             "with their annotations; give each video its own id")
    videos = {}
    for index, entry in enumerate(entries):
        video = _parse_video(entry, index, root, findings)
        if video is not None and video.id not in repeated:
            videos[video.id] = video
    return videos


def _parse_video(entry: Any, index: int, root: Path, findings: Findings) -> VisVideo | None:
    say = findings.about(f"videos[{index}]")
    if not isinstance(entry, dict):
        say.error("wrong_type", f"is {describe(entry)}, not an object; remove it")
        return None
    video_id = get_id(entry, "id")
    if isinstance(video_id, Invalid):
        say.invalid(video_id, "give every video a unique integer id")
        return None
    say = findings.about(f"video id {video_id}")
    width, height = get_size(entry, "width"), get_size(entry, "height")
    names = entry.get("file_names")
    for value in (width, height):
        if isinstance(value, Invalid):
            say.invalid(value, "set the video's frame size in pixels")
            return None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        say.error("wrong_type", f"'file_names' is {describe(names)}, not a list of frame paths; "
                  "list the video's frames relative to the frames folder")
        return None
    length = entry.get("length", len(names))
    if length != len(names):
        say.error("bad_length", f"'length' is {describe(length)} but 'file_names' lists "
                  f"{len(names)} frames; make them agree")
        return None
    paths = _frame_paths(names, root, say)
    if paths is None or not _frames_fit(paths, width, height, say):
        return None
    return VisVideo(video_id, width, height, paths)


def _frame_paths(names: list[str], root: Path, say: Reporter) -> list[Path] | None:
    """The frames' paths inside ``root``, or None with an ``unsafe_path`` / ``missing_frame``
    error (checked by text and by where links resolve before anything is opened)."""
    paths = [inside_folder(root, name) for name in names]
    unsafe = [name for name, path in zip(names, paths) if path is None]
    if unsafe:
        say.error("unsafe_path", f"'file_names' {describe(unsafe[0])} leads outside {root} "
                  "(absolute, '..' or a link out); refused, not opened: keep the frames in "
                  "the frames folder and their paths relative to it")
        return None
    missing = [name for name, path in zip(names, paths) if not os.path.isfile(path)]
    if missing:
        say.error("missing_frame", f"{len(missing)} of its {len(names)} frames are not in "
                  f"{root} (first: {describe(missing[0])}); add them or fix the frames folder")
        return None
    return paths


def _frames_fit(paths: list[Path], width: int, height: int, say: Reporter) -> bool:
    """Whether every frame's header says ``width`` x ``height`` (else one error)."""
    for path in paths:
        try:
            size = image_size(path)
        except DataError as error:
            say.error("unreadable_frame", error.message, file=str(path))
            return False
        if size != (width, height):
            say.error("size_mismatch", f"frame {path.name} is {size[0]} x {size[1]}, the video "
                      f"says {width} x {height}; fix 'width'/'height' or the frames",
                      file=str(path))
            return False
    return True


def _parse_tracks(entries: list, split: VisSplit, findings: Findings) -> list[VisTrack]:
    """``annotations`` -> tracks whose video, category and every frame's mask are usable."""
    repeated = _repeated_ids(entries, findings, "annotation", "several annotations share this id; all are "
                             "left out; give each its own id")
    tracks = []
    for index, entry in enumerate(entries):
        track = _parse_track(entry, index, split, findings)
        if track is not None and track.id not in repeated:
            tracks.append(track)
    return tracks


def _parse_track(entry: Any, index: int, split: VisSplit, findings: Findings
                 ) -> VisTrack | None:
    say = findings.about(f"annotations[{index}]")
    if not isinstance(entry, dict):
        say.error("wrong_type", f"is {describe(entry)}, not an object; remove it")
        return None
    fields = {key: get_id(entry, key) for key in ("id", "video_id", "category_id")}
    for key, value in fields.items():
        if isinstance(value, Invalid):
            say.invalid(value, f"set '{key}' to an integer id")
            return None
    say = findings.about(f"annotation id {fields['id']}", annotation_id=fields["id"])
    video = split.videos.get(fields["video_id"])
    if video is None:
        say.error("unknown_video", f"video_id {fields['video_id']} is not a usable video "
                  "(see its own problem, if any); add the video or remove the annotation")
        return None
    if fields["category_id"] not in split.categories:
        say.error("unknown_category", f"category_id {fields['category_id']} is not in "
                  "'categories'; add the category or fix the id")
        return None
    segmentations = _frame_segmentations(entry.get("segmentations"), video, say)
    if segmentations is None:
        return None
    if all(s is None for s in segmentations):
        say.warning("empty_track", "no mask on any frame; it teaches nothing: add its masks "
                    "or remove it")
    return VisTrack(fields["id"], video.id, fields["category_id"], segmentations,
                    bool(entry.get("iscrowd", 0)))


def _frame_segmentations(value: Any, video: VisVideo, say: Reporter) -> list[Any] | None:
    """One checked segmentation (or None) per frame of ``video``; None when any is bad."""
    if not isinstance(value, list) or len(value) != len(video.frame_paths):
        found = f"{len(value)} entries" if isinstance(value, list) else describe(value)
        say.error("bad_length", f"'segmentations' has {found}, not one per frame of video "
                  f"{video.id} ({len(video.frame_paths)}); use null on frames without the "
                  "instance")
        return None
    checked = []
    for index, segmentation in enumerate(value):
        frame = ImageRecord(id=video.id, file_name=video.frame_paths[index].name,
                            path=video.frame_paths[index], width=video.width,
                            height=video.height)
        frame_say = Reporter(say.findings, f"{say.where}, frame {index}",
                             annotation_id=say.annotation_id)
        mask = read_segmentation(segmentation, frame, frame_say)
        if mask is False:
            return None
        checked.append(None if mask is None else mask.segmentation)
    return checked
