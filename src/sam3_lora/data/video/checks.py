"""``sam3-lora data validate DIR`` for video: check DAVIS / YouTube-VOS folders.

DIR is one split (it holds ``JPEGImages/`` and ``Annotations/``) or a dataset root whose
``train/`` (required), ``valid/`` and ``test/`` are such splits. Each split is listed with
``layout.load_video_split`` (its problems: missing folders, unsafe paths, empty sequences,
masks without frames), then every frame and mask is decoded, adding:

================  =======  ============================================================
code              level    when
================  =======  ============================================================
unreadable_frame  error    a frame that is not a readable image
unreadable_mask   error    a mask that is not a readable PNG
mask_mode         error    a mask that is not palette ('P') or grayscale ('L'): its
                           pixels are colours, not object ids
size_mismatch     error    a mask whose size differs from its frame's, or a frame whose
                           size differs from the sequence's first frame
new_object        error    (protocol ``davis``) an object absent from the first annotated
                           frame: DAVIS's semi-supervised task gives every object's mask on
                           that frame only; one line per object, naming where it appears
missing_mask      error    (protocol ``davis``) frames after the first annotated one with
                           no mask: DAVIS annotates every frame; one line per sequence
frame_gap         warning  numbered frames with a number missing (the step between frame
                           numbers changes): motion jumps there; one line per sequence
no_objects        warning  a sequence whose masks hold no object: nothing to track
unreadable_meta   error    ``meta.json`` is there but not in YouTube-VOS's form
meta_mismatch     warning  ``meta.json`` names other objects than the masks hold (one line
                           a sequence): objects without a category, or categories of
                           objects no mask shows
missing_split     error    a dataset root with no ``train/`` split
ignored_folder    warning  a folder in the layout that is not train/valid/test: not read
================  =======  ============================================================

Protocol ``youtube-vos``: objects may first appear on any frame (their first mask is where
they are prompted) and frames may go without masks, so ``new_object`` and ``missing_mask``
do not apply. The exit code is 0 when there are no errors (warnings allowed), 1 otherwise,
as for COCO datasets. ``validate_vis_file`` reports a YouTube-VIS file's problems (see
``data.video.vis``) in the same form.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sam3_lora.data.checks import DatasetReport
from sam3_lora.data.images import check_decodes, image_size
from sam3_lora.data.records import HasProblems, Problem
from sam3_lora.data.scaffold import SPLITS
from sam3_lora.data.video.layout import (
    META_FILE,
    NotAnIndexMask,
    VideoSequence,
    VideoSplit,
    is_video_split,
    load_video_split,
    object_ids,
    read_index_mask,
    read_meta,
)
from sam3_lora.data.video.vis import load_vis_split
from sam3_lora.errors import DataError

PROTOCOLS = ("davis", "youtube-vos")
_LISTED_FRAMES = 5
"""Frame names quoted in a one-line problem about many frames; the rest are counted."""


@dataclass
class VideoSplitReport(HasProblems):
    """What one video split holds, and what is wrong with it."""

    name: str
    root: Path
    num_sequences: int = 0
    num_frames: int = 0
    num_masks: int = 0
    """Mask files (DAVIS layout: frames with a mask), or per-frame instance masks
    (YouTube-VIS)."""
    num_objects: int = 0
    """Objects over all sequences (an id counts once per sequence)."""
    problems: list[Problem] = field(default_factory=list)


VideoDatasetReport = DatasetReport
"""Every video split's report (``VideoSplitReport``), plus problems of the dataset as a whole."""


def is_video_dataset(root: str | Path) -> bool:
    """Whether ``root`` is a video split or holds one as ``train/``, ``valid/`` or ``test/``."""
    root = Path(root)
    return is_video_split(root) or any(is_video_split(root / name) for name in SPLITS)


def validate_video_dataset(root: str | Path, *, image_set: str | Path | None = None,
                           protocol: str = "davis", full_decode: bool = True
                           ) -> VideoDatasetReport:
    """Check every split under ``root`` (see the module docstring). ``image_set`` (a list of
    sequence names) applies to every split read; ``full_decode`` decodes every frame's
    pixels (catches truncated files), else only headers."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown video protocol {protocol!r}; choose from "
                        f"{', '.join(PROTOCOLS)}", option="protocol")
    root = Path(root)
    report = VideoDatasetReport(root)
    if is_video_split(root):
        split = load_video_split(root, image_set=image_set)
        report.splits.append(check_video_split(split, root.name, protocol, full_decode))
        return report
    if not root.is_dir():
        load_video_split(root)   # raises the one-line "not found" error
    for name in SPLITS:
        if is_video_split(root / name):
            split = load_video_split(root / name, image_set=image_set)
            report.splits.append(check_video_split(split, name, protocol, full_decode))
        elif name == "train":
            report.problems.append(_problem("missing_split", root / name, (
                f"no train/ split in {root}; put the training clips in train/JPEGImages/SEQ "
                "and train/Annotations/SEQ, or validate one split folder by itself")))
    report.problems.extend(_ignored_folders(root))
    return report


def validate_vis_file(annotation_file: str | Path, frames_root: str | Path | None = None
                      ) -> VideoDatasetReport:
    """A YouTube-VIS file checked with its frames (``data.video.vis.load_vis_split``), as a
    report of one split named after the file."""
    split = load_vis_split(annotation_file, frames_root)
    path = Path(annotation_file)
    report = VideoSplitReport(path.stem, split.frames_root, problems=list(split.problems))
    report.num_sequences = len(split.videos)
    report.num_frames = sum(len(video.frame_paths) for video in split.videos.values())
    report.num_masks = sum(s is not None for track in split.tracks for s in track.segmentations)
    report.num_objects = len(split.tracks)
    return VideoDatasetReport(path.parent, splits=[report])


def check_video_split(split: VideoSplit, name: str, protocol: str = "davis",
                      full_decode: bool = True) -> VideoSplitReport:
    """The layout's problems plus those found decoding every frame and mask of ``split``."""
    report = VideoSplitReport(name, split.root, problems=list(split.problems))
    categories = _categories(split.root, report.problems)
    for sequence in split.sequences:
        report.num_sequences += 1
        report.num_frames += len(sequence.frame_paths)
        report.num_masks += len(sequence.mask_paths)
        report.problems.extend(_frame_problems(sequence, full_decode))
        report.problems.extend(_gap_problems(sequence))
        ids_per_frame = _mask_problems(sequence, report.problems)
        ids = {i for frame_ids in ids_per_frame.values() for i in frame_ids}
        report.num_objects += len(ids)
        report.problems.extend(_object_problems(sequence, ids_per_frame, protocol))
        if categories is not None:
            report.problems.extend(_meta_problems(sequence, ids, categories,
                                                  split.root / META_FILE))
    return report


def _categories(root: Path, problems: list[Problem]) -> dict[str, dict[int, str]] | None:
    """``layout.read_meta``'s categories; None (with an error) when unreadable."""
    try:
        return read_meta(root)
    except DataError as error:
        problems.append(_problem("unreadable_meta", root / META_FILE, error.message))
        return None


def _meta_problems(sequence: VideoSequence, ids: set[int],
                   categories: dict[str, dict[int, str]], meta_path: Path) -> list[Problem]:
    """Objects the masks hold that ``meta.json`` gives no category, and the reverse."""
    named = set(categories.get(sequence.name, {}))
    unnamed, unseen = sorted(ids - named), sorted(named - ids)
    if not unnamed and not unseen:
        return []
    parts = ([f"objects {unnamed} have no category there"] if unnamed else []) + \
        ([f"objects {unseen} are in no mask"] if unseen else [])
    return [_problem("meta_mismatch", meta_path, (
        f"sequence {sequence.name!r} in {META_FILE}: {' and '.join(parts)}; make "
        f"{META_FILE} list exactly the ids the masks hold"), "warning")]


def _frame_problems(sequence: VideoSequence, full_decode: bool) -> list[Problem]:
    """Unreadable frames, and frames whose size differs from the first readable one's."""
    problems, first_size = [], None
    for path in sequence.frame_paths:
        try:
            size = image_size(path)
            if full_decode:
                check_decodes(path)
        except DataError as error:
            problems.append(_problem("unreadable_frame", path, error.message))
            continue
        if first_size is None:
            first_size = size
        elif size != first_size:
            problems.append(_problem("size_mismatch", path, (
                f"frame is {_size(size)}, the sequence's first frame {_size(first_size)}; "
                "every frame of a clip must have one size: resize or re-export it")))
    return problems


def _mask_problems(sequence: VideoSequence, problems: list[Problem]) -> dict[int, list[int]]:
    """Decode every mask, appending unreadable, wrong-mode and wrong-size ones to
    ``problems``; returns frame index -> object ids of each usable mask, in frame order."""
    ids_per_frame = {}
    for index in sequence.annotated_frames:
        path = sequence.mask_paths[sequence.frame_names[index]]
        try:
            mask = read_index_mask(path)
        except NotAnIndexMask as error:
            problems.append(_problem("mask_mode", path, error.message))
            continue
        except DataError as error:
            problems.append(_problem("unreadable_mask", path, error.message))
            continue
        mask_size = (mask.shape[1], mask.shape[0])
        frame_size = _header_size(sequence.frame_paths[index])
        if frame_size is not None and mask_size != frame_size:
            problems.append(_problem("size_mismatch", path, (
                f"mask is {_size(mask_size)} but its frame "
                f"{sequence.frame_paths[index].name} is {_size(frame_size)}; "
                "save the mask at the frame's size")))
            continue
        ids_per_frame[index] = object_ids(mask)
    return ids_per_frame


def _object_problems(sequence: VideoSequence, ids_per_frame: dict[int, list[int]],
                     protocol: str) -> list[Problem]:
    """``no_objects``; under DAVIS's protocol, ``new_object`` and ``missing_mask``."""
    if not ids_per_frame:
        return []
    folder = sequence.frame_paths[0].parent
    if not any(ids_per_frame.values()):
        return [_problem("no_objects", folder, (
            f"sequence {sequence.name!r}: no mask holds an object (only background 0 and "
            "void 255); nothing to track: annotate its objects, or store a binary mask's "
            "object as 1 (255 is DAVIS's void), or remove the sequence"), "warning")]
    if protocol != "davis":
        return []
    problems = []
    names = sequence.frame_names
    first = min(ids_per_frame)
    first_appearance: dict[int, int] = {}
    for index, ids in ids_per_frame.items():
        for object_id in ids:
            first_appearance.setdefault(object_id, index)
    for object_id, index in sorted(first_appearance.items()):
        if object_id not in ids_per_frame[first]:
            problems.append(_problem("new_object", sequence.mask_paths[names[index]], (
                f"object {object_id} of sequence {sequence.name!r} first appears on frame "
                f"{names[index]}, not on the first annotated frame {names[first]}: DAVIS's "
                f"semi-supervised protocol prompts every object there; add its mask on "
                f"{names[first]}, give it an id present there, or validate with protocol "
                "youtube-vos")))
    unannotated = [names[i] for i in range(first, len(names)) if names[i] not in
                   sequence.mask_paths]
    if unannotated:
        problems.append(_problem("missing_mask", folder, (
            f"sequence {sequence.name!r}: {_listed(unannotated)} after the first annotated "
            f"frame {names[first]} have no mask; DAVIS annotates every frame: add them, or "
            "validate with protocol youtube-vos if the clip is annotated sparsely")))
    return problems


def _gap_problems(sequence: VideoSequence) -> list[Problem]:
    """Numbered frames whose step changes (0, 1, 2, 4: frame 3 is missing). YouTube-VOS
    numbers every 5th frame (0, 5, 10): the usual step, the most common one, is no gap."""
    names = sequence.frame_names
    if len(names) < 3 or not all(name.isdigit() for name in names):
        return []
    numbers = [int(name) for name in names]
    steps = [following - previous for previous, following in itertools.pairwise(numbers)]
    step = Counter(steps).most_common(1)[0][0]
    if all(other == step for other in steps):
        return []
    present, width = set(numbers), len(names[0])
    missing = [f"{n:0{width}d}" for n in range(numbers[0], numbers[-1], step)
               if n not in present]
    what = f"{_listed(missing)} are missing" if missing else "the frame numbers jump"
    return [_problem("frame_gap", sequence.frame_paths[0].parent, (
        f"sequence {sequence.name!r}: {what} (frames numbered every {step}); motion jumps "
        "there: add the frames, or renumber them if none were lost"), "warning")]


def _ignored_folders(root: Path) -> list[Problem]:
    """Folders in the video layout that are not train/valid/test (``val/``): not read."""
    return [_problem("ignored_folder", child, (
        f"{child.name}/ is in the video layout but only train/, valid/ and test/ are read; "
        "rename it if it is one of them"), "warning")
        for child in sorted(root.iterdir())
        if child.name not in SPLITS and child.is_dir() and is_video_split(child)]


def _header_size(path: Path) -> tuple[int, int] | None:
    """A frame's (width, height), None when unreadable (reported as ``unreadable_frame``)."""
    try:
        return image_size(path)
    except DataError:
        return None


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]} x {size[1]}"


def _listed(names: list[str]) -> str:
    """'00003, 00004 and 2 more' style: a few names, the rest counted."""
    shown = ", ".join(names[:_LISTED_FRAMES])
    more = len(names) - _LISTED_FRAMES
    return f"{len(names)} frame(s) ({shown}{f' and {more} more' if more > 0 else ''})"


def _problem(code: str, path: Path, message: str, severity: str = "error") -> Problem:
    return Problem(severity=severity, code=code, file=str(path), message=message)  # type: ignore[arg-type]


def format_video_report(report: VideoDatasetReport) -> str:
    """The report as plain text: per split counts, then errors, then warnings, one line
    each, then a summary line."""
    lines = [f"Video dataset {report.root}"]
    lines += [f"  {_problem_line(problem, report.root)}" for problem in report.problems]
    for split in report.splits:
        lines += ["", f"{split.name}: {_relative(split.root, report.root) or '.'}",
                  (f"  sequences: {split.num_sequences}, frames: {split.num_frames}, "
                   f"masks: {split.num_masks}, objects: {split.num_objects}")]
        for title, problems in (("errors", split.errors), ("warnings", split.warnings)):
            if problems:
                lines.append(f"  {title} ({len(problems)}):")
                lines += [f"    {_problem_line(problem, report.root)}" for problem in problems]
    errors, warnings = len(report.errors), len(report.warnings)
    if errors:
        lines.append(f"\nFAILED: {errors} error(s), {warnings} warning(s). Fix the errors.")
    elif warnings:
        lines.append(f"\nOK with {warnings} warning(s).")
    else:
        lines.append("\nOK: no problems found.")
    return "\n".join(lines)


def _problem_line(problem: Problem, root: Path) -> str:
    """One line: severity, code, the message, and the file (relative to the root)."""
    where = _relative(problem.file, root) or str(root)
    return f"{problem.severity} {problem.code}: {problem.message}  (in {where})"


def _relative(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it ('' for the root itself), else as is."""
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return str(path)
    return "" if relative == Path(".") else str(relative)
