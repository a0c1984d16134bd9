"""The DAVIS / YouTube-VOS layout: frames and index masks, one folder per sequence.

Layout of one split (``ROOT``)::

    ROOT/
      JPEGImages/SEQ/00000.jpg ...     the frames, in name order (numbers sort as numbers)
      Annotations/SEQ/00000.png ...    index masks: pixel value = object id, 0 background,
                                       255 void (DAVIS: pixels ignored by training and scores)
      ImageSets/...txt                 optional: the sequences to read, one name a line
      meta.json                        optional (YouTube-VOS): each object's category,
                                       {"videos": {SEQ: {"objects": {"1": {"category": ...}}}}}

DAVIS 2017 keeps its frames one level deeper, ``JPEGImages/480p/SEQ``; that level is found
by itself (``resolution``). A mask belongs to the frame with the same name stem. Masks are
palette ('P') or grayscale ('L') PNGs: the stored index is the id, whatever colour the
palette gives it.

Nothing is decoded up front: a ``VideoSequence`` lists its files and decodes one frame or
mask when asked (``frame``, ``mask``); ``objects`` decodes every mask once, to say which
object appears on which frame. Every path read stays inside ROOT: a sequence name from a list
file that climbs out, or a folder or file that is a symbolic link leading outside ROOT, is
refused (an ``unsafe_path`` error) and never opened. Links inside ROOT are followed.

Problems of the layout itself (what ``data validate`` reports before decoding anything):

=================  =======  ===========================================================
code               level    when
=================  =======  ===========================================================
missing_folder     error    ROOT has no ``JPEGImages/`` or no ``Annotations/``
unknown_sequence   error    the list file names a sequence with no frame folder
unsafe_path        error    a listed name, folder or file leads outside ROOT (left out)
empty_sequence     error    a sequence with no frame, or no mask at all
missing_frame      error    a mask with no frame of the same name, or a mask folder
                            with no frame folder (the mask is left out)
=================  =======  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.data.coco.split import read_json
from sam3_lora.data.images import IMAGE_SUFFIXES, image_size, open_image
from sam3_lora.data.records import HasProblems, Problem
from sam3_lora.errors import DataError
from sam3_lora.files import inside_folder

FRAMES_DIR = "JPEGImages"
MASKS_DIR = "Annotations"
IMAGE_SETS_DIR = "ImageSets"
META_FILE = "meta.json"
MASK_SUFFIX = ".png"
MASK_MODES = ("P", "L")
"""PIL modes whose stored values are the object ids (palette index or grey level)."""
BACKGROUND_ID = 0
VOID_ID = 255
"""DAVIS's "void" pixels (object borders, ambiguous regions): never an object."""
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")
"""DAVIS 2017's extra level between ``JPEGImages`` and the sequences, tried in this order."""


class NotAnIndexMask(DataError):
    """A mask file that decodes, but in a mode whose values are not object ids (RGB...)."""


@dataclass
class VideoSequence:
    """One clip: its frames in order and the masks of the annotated ones."""

    name: str
    frame_paths: list[Path]
    """Every frame file, in name order."""
    mask_paths: dict[str, Path] = field(default_factory=dict)
    """Frame name (stem) -> its mask file, for the annotated frames."""

    @property
    def frame_names(self) -> list[str]:
        return [path.stem for path in self.frame_paths]

    @property
    def annotated_frames(self) -> list[int]:
        """Indices (into ``frame_paths``) of the frames that have a mask, in order."""
        return [i for i, name in enumerate(self.frame_names) if name in self.mask_paths]

    @cached_property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the first frame, read from its header."""
        return image_size(self.frame_paths[0])

    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` decoded as RGB (``data.images.open_image``'s conventions)."""
        return open_image(self.frame_paths[index])

    def mask(self, index: int) -> np.ndarray | None:
        """uint8 (height, width) object ids of frame ``index``, or None when it has no mask."""
        path = self.mask_paths.get(self.frame_paths[index].stem)
        return None if path is None else read_index_mask(path)

    @cached_property
    def objects(self) -> dict[int, list[int]]:
        """Object id -> indices of the frames where it has pixels, ids ascending; an object's
        first frame (where a tracker is prompted) is ``objects[id][0]``. Decodes every mask
        once; a mask that cannot be read raises ``DataError``."""
        frames: dict[int, list[int]] = {}
        for index in self.annotated_frames:
            for object_id in object_ids(self.mask(index)):
                frames.setdefault(object_id, []).append(index)
        return dict(sorted(frames.items()))


@dataclass
class VideoSplit(HasProblems):
    """A split folder read: its usable sequences and what is wrong with the layout."""

    root: Path
    frames_dir: Path
    """``ROOT/JPEGImages`` (or its DAVIS resolution level)."""
    masks_dir: Path
    sequences: list[VideoSequence] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def object_ids(mask: np.ndarray) -> list[int]:
    """The object ids present in an index mask, ascending (background and void left out)."""
    values = np.unique(mask)
    return [int(v) for v in values if v not in (BACKGROUND_ID, VOID_ID)]


def read_index_mask(path: str | Path) -> np.ndarray:
    """uint8 (height, width) object ids stored in the PNG at ``path`` (palette index or grey
    level, never the palette's colours). ``DataError`` naming the file when it is missing,
    undecodable, or in another mode (an RGB mask holds colours, not ids)."""
    path = Path(path)
    if not os.path.isfile(path):
        raise DataError(f"mask file not found: {path}; add it or remove the frame's annotation")
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in MASK_MODES:
                return np.array(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read mask {path}: {reason}; re-export it as a PNG") from None
    raise NotAnIndexMask(f"mask {path} is a {mode!r} image, not an index mask; save it as a "
                         "palette ('P') or 8-bit grayscale ('L') PNG whose pixel values are "
                         "object ids")


def read_meta(root: str | Path) -> dict[str, dict[int, str]] | None:
    """The categories ``ROOT/meta.json`` gives (YouTube-VOS's form): sequence -> object id
    -> category, e.g. ``{"seq0000": {1: "red circle"}}``; None when there is no such file.
    Other keys (``frames``...) are not read. ``DataError`` naming the entry when the file
    is not in that form."""
    path = Path(root) / META_FILE
    if not os.path.isfile(path):
        return None
    videos = read_json(path, "meta.json")
    videos = videos.get("videos") if isinstance(videos, dict) else None
    if not isinstance(videos, dict):
        raise DataError(f"{path}: no top-level 'videos' object; write {{\"videos\": {{SEQ: "
                        "{\"objects\": {ID: {\"category\": NAME}}}}}} or remove the file")
    return {name: _meta_categories(path, name, entry) for name, entry in videos.items()}


def _meta_categories(path: Path, name: str, entry) -> dict[int, str]:
    objects = entry.get("objects") if isinstance(entry, dict) else None
    if not isinstance(objects, dict):
        raise DataError(f"{path}: video {name!r} has no 'objects' object; give its objects "
                        "by id, each with a 'category'")
    categories = {}
    for key, described in objects.items():
        category = described.get("category") if isinstance(described, dict) else None
        if not key.isdigit() or not isinstance(category, str) or not category.strip():
            raise DataError(f"{path}: video {name!r} object {key!r} needs an integer id "
                            "(its mask value) and a non-empty 'category' string; fix it")
        categories[int(key)] = category
    return categories


def is_video_split(folder: str | Path) -> bool:
    """Whether ``folder`` is laid out as a DAVIS / YouTube-VOS split: it holds
    ``JPEGImages/`` or ``Annotations/`` (one alone is a split missing the other, which
    ``load_video_split`` reports, rather than some other layout)."""
    return any(os.path.isdir(Path(folder) / name) for name in (FRAMES_DIR, MASKS_DIR))


def load_video_split(root: str | Path, *, image_set: str | Path | None = None,
                     resolution: str | None = None) -> VideoSplit:
    """List the sequences of the split folder ``root`` (see the module docstring).

    ``image_set`` is a text file naming the sequences to read, one a line (DAVIS's
    ``ImageSets/2017/train.txt``); without it every folder under ``JPEGImages`` (and
    ``Annotations``) is a sequence. ``resolution`` is DAVIS's level under ``JPEGImages``
    (``480p``), found by itself when left out. Only folders are listed and headers of
    nothing are read: problems found are in ``problems``, sequences kept in ``sequences``.
    """
    root = Path(root)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "not found"
        raise DataError(f"video dataset folder {state}: {root}; pass the folder holding "
                        f"{FRAMES_DIR}/ and {MASKS_DIR}/")
    level = resolution if resolution is not None else _davis_resolution(root)
    split = VideoSplit(root, root / FRAMES_DIR / level, root / MASKS_DIR / level)
    for folder in (split.frames_dir, split.masks_dir):
        if not folder.is_dir():
            split.problems.append(_problem("missing_folder", folder, (
                f"no {folder.relative_to(root)}/ folder; put the frames in "
                f"{FRAMES_DIR}/SEQ/*.jpg and the index masks in {MASKS_DIR}/SEQ/*.png")))
    if split.problems:
        return split
    names = _listed_sequences(image_set) if image_set is not None else _sequence_folders(split)
    for name in names:
        sequence = _read_sequence(split, name, listed=image_set is not None)
        if sequence is not None:
            split.sequences.append(sequence)
    return split


def _davis_resolution(root: Path) -> str:
    """DAVIS's resolution level when ``JPEGImages`` holds one (``480p``), else ''."""
    return next((name for name in DAVIS_RESOLUTIONS
                 if os.path.isdir(root / FRAMES_DIR / name)), "")


def _listed_sequences(image_set: str | Path) -> list[str]:
    """Sequence names of a list file: one a line, blank lines skipped, duplicates once."""
    try:
        lines = Path(image_set).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise DataError(f"cannot read the sequence list {image_set}: {reason}; give a text "
                        "file naming one sequence a line") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _sequence_folders(split: VideoSplit) -> list[str]:
    """Every folder under the frames and the masks folders, sorted."""
    names = {entry.name for folder in (split.frames_dir, split.masks_dir)
             for entry in os.scandir(folder) if entry.is_dir()}
    return sorted(names)


def _read_sequence(split: VideoSplit, name: str, listed: bool) -> VideoSequence | None:
    """The sequence ``name`` with its frame and mask files, or None (with a problem)."""
    frames_dir = _inside(split, split.frames_dir, name)
    masks_dir = frames_dir and _inside(split, split.masks_dir, name)   # one problem a name
    if frames_dir is None or masks_dir is None:
        return None
    if not frames_dir.is_dir():
        if listed:
            split.problems.append(_problem("unknown_sequence", frames_dir, (
                f"the sequence list names {name!r} but there is no such frame folder; add it "
                "or remove the name from the list")))
        else:
            split.problems.append(_problem("missing_frame", masks_dir, (
                f"masks of sequence {name!r} but no {frames_dir.relative_to(split.root)}/ "
                "folder; add its frames or remove the masks")))
        return None
    frames = _files(split, frames_dir, lambda suffix: suffix in IMAGE_SUFFIXES)
    masks = _files(split, masks_dir, lambda suffix: suffix == MASK_SUFFIX) \
        if masks_dir.is_dir() else []
    sequence = VideoSequence(name, frames)
    by_stem = {path.stem for path in frames}
    for mask in masks:
        if mask.stem in by_stem:
            sequence.mask_paths[mask.stem] = mask
        else:
            split.problems.append(_problem("missing_frame", mask, (
                f"mask of frame {mask.stem!r} but no {mask.stem}.jpg in "
                f"{frames_dir.relative_to(split.root)}/; add the frame or delete the mask")))
    if not frames or not sequence.mask_paths:
        missing = "no frame" if not frames else "no mask on any of its frames"
        split.problems.append(_problem("empty_sequence", frames_dir, (
            f"sequence {name!r} has {missing}; the tracker needs frames and at least a first "
            "frame's mask: add them or remove the sequence")))
        return None
    return sequence


def _inside(split: VideoSplit, folder: Path, name: str) -> Path | None:
    """``folder / name`` when it stays inside the split root, else None with an error."""
    relative = str(folder.relative_to(split.root) / name)
    path = inside_folder(split.root, relative)
    if path is None:
        split.problems.append(_problem("unsafe_path", split.root / relative, (
            f"{relative!r} leads outside {split.root} (a '..' name or a symbolic link out); "
            "refused, not opened: put the data inside the dataset folder")))
    return path


def _files(split: VideoSplit, folder: Path, wanted) -> list[Path]:
    """Files in ``folder`` whose lower-case suffix ``wanted`` accepts, in frame order; a
    link leading outside the split root is left out with an error."""
    found = [entry.name for entry in os.scandir(folder)
             if wanted(Path(entry.name).suffix.lower()) and not entry.name.startswith(".")]
    kept = [_inside(split, folder, name) for name in sorted(found, key=frame_order)]
    return [path for path in kept if path is not None and path.is_file()]


def frame_order(file_name: str) -> tuple:
    """Sort key of a frame file: numbered names by number (``9.jpg`` before ``10.jpg``),
    then the others by name."""
    stem = Path(file_name).stem
    return (0, int(stem), file_name) if stem.isdigit() else (1, 0, file_name)


def _problem(code: str, path: Path, message: str, severity: str = "error") -> Problem:
    return Problem(severity=severity, code=code, file=str(path), message=message)  # type: ignore[arg-type]
