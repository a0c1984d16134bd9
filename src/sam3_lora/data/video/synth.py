"""Deterministic synthetic clips of moving coloured shapes in the DAVIS layout.

The shapes, colours, backgrounds and rasterisation are those of ``data.synth`` (a concept is
"<colour> <shape>", e.g. "red circle"). Each clip has a static background and 1..N annotated
objects (ids 1..N), drawn in id order so a later id passes over an earlier one; what makes
a tracker's life hard is built in on purpose:

- motion: every object moves at its own velocity (``speed_range``: 2-6 % of the shorter side
  per frame unless given) and spins; objects bounce off the borders;
- occlusion: object 2 (when there is one) is aimed at where object 1 is at mid-clip, so it
  passes over it;
- entering and leaving: object 3 (when there is one) does not bounce: it starts half out of
  the frame on one border, crosses the frame and leaves it by the opposite border at 80 % of
  the clip (its later masks are empty). It is half visible on the first frame, so every
  object is on the first annotated frame (DAVIS's semi-supervised protocol);
- look-alike distractors (``distractor=True``; ``look_alikes`` of them, 1 unless given): each
  a shape of object 1's concept (same shape, same colour) moving on its own path, drawn at a
  random depth, and NOT annotated: its
  pixels are background (id 0) in the masks, so a tracker that jumps to it is wrong, which is
  the failure it is there to expose; ``meta.json`` names it under ``distractors``;
- appearance change: each object's colour drifts (up to 40 levels per channel over the clip)
  and its size changes linearly (x0.75 to x1.3 by the last frame).

Masks hold exactly the visible pixels of each object (the shapes drawn over it removed).
A clip whose first frame would show an object with fewer than ``min_visible_pixels`` pixels
is drawn again (from the same generator, so still deterministic).

Output, per split ``OUT/{train,valid,test}``: ``JPEGImages/SEQ/00000.jpg ...``,
``Annotations/SEQ/00000.png ...`` (palette PNGs, DAVIS's palette, index = object id) and
``meta.json`` in YouTube-VOS's form: ``{"videos": {SEQ: {"objects": {"1": {"category":
"red circle", "frames": ["00000", ...]}}, "distractors": [{"category": "red circle",
"look_alike_of": "1"}]}}}``, where ``frames`` lists the frames the object is visible on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.data.scaffold import SPLITS, check_output_dir
from sam3_lora.data.synth import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    ImageSize,
    check_names,
    parse_concepts,
    rasterize,
    size_sampler,
)
from sam3_lora.data.video.layout import FRAMES_DIR, MASKS_DIR, META_FILE
from sam3_lora.errors import DataError
from sam3_lora.files import atomic_folder, replacing_file, write_file

DEFAULT_SEQUENCES = {"train": 8, "valid": 2, "test": 2}
DEFAULT_SIZE = 112
DEFAULT_OBJECTS = (2, 3)
DEFAULT_RADIUS = (0.08, 0.2)
MAX_OBJECTS = 254
"""Mask ids are bytes and 255 is DAVIS's void."""
DEFAULT_SPEED = (0.02, 0.06)
"""Speed of a wandering object, a fraction of the shorter side per frame."""
_SPIN = 0.1
"""Largest rotation per frame, radians."""
_SCALE_AT_END = (0.75, 1.3)
_COLOR_DRIFT = 40
_CROSSING = 0.8
"""The object entering and leaving has crossed the frame at this fraction of the clip."""
_ATTEMPTS = 20
_JPEG_QUALITY = 90


@dataclass
class Track:
    """One shape through a clip, frame by frame (T frames)."""

    object_id: int
    """Its id in the masks; 0 for the unannotated distractor."""
    shape: str
    color: str
    centers: np.ndarray
    """float (T, 2) x, y in pixels."""
    radii: np.ndarray
    """float (T,) circumradius in pixels."""
    angles: np.ndarray
    """float (T,) rotation in radians."""
    shades: np.ndarray
    """uint8 (T, 3) RGB colour."""

    @property
    def category(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class VideoSummary:
    """What ``synthesize_video`` wrote: per split sequences, frames and objects."""

    out_dir: Path
    num_categories: int
    sequences: dict[str, int] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{s} {n} sequences/{self.frames[s]} frames/{self.objects[s]} objects"
                 for s, n in self.sequences.items()]
        return (f"wrote {self.out_dir}: {', '.join(parts) or 'no splits'}; "
                f"{self.num_categories} categories (DAVIS layout, {META_FILE} per split)")


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / PASCAL VOC masks as a flat [r, g, b, ...] list:
    id 1 dark red, 2 green, 3 olive... (the bits of the id spread over the three channels)."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


def synthesize_video(
    out_dir: str | Path,
    *,
    shapes: Sequence[str] = ("circle", "square", "triangle"),
    colors: Sequence[str] = ("red", "green", "blue"),
    concepts: Sequence[str] | None = None,
    background: str | Sequence[str] = "plain",
    sequences_per_split: dict[str, int] | None = None,
    frames: int = 12,
    image_size: ImageSize = DEFAULT_SIZE,
    objects_per_clip: tuple[int, int] = DEFAULT_OBJECTS,
    radius_range: tuple[float, float] = DEFAULT_RADIUS,
    distractor: bool = True,
    look_alikes: int = 1,
    speed_range: tuple[float, float] = DEFAULT_SPEED,
    min_visible_pixels: int = 20,
    seed: int = 0,
) -> VideoSummary:
    """Write synthetic clips (see the module docstring) into the empty or new folder
    ``out_dir``, all at once: a failure leaves no half-written dataset behind.

    ``sequences_per_split`` defaults to ``DEFAULT_SEQUENCES``; ``frames`` is the clip length;
    ``image_size`` as in ``data.synth.synthesize`` (drawn once per clip); ``objects_per_clip``
    an inclusive (min, max) of annotated objects; ``radius_range`` the circumradius on the
    first frame as a fraction of the shorter side; ``look_alikes`` how many look-alike
    distractors a clip has with ``distractor``; ``speed_range`` an inclusive (min, max) speed of
    the wandering objects and distractors, a fraction of the shorter side per frame (faster
    motion is harder to track: the shape moves further from where memory last saw it). Each
    clip draws from its own generator seeded by (seed, split, index): the same arguments give
    byte-identical files; the defaults draw the clips they drew before these two options.
    """
    if concepts is None:
        concepts = [f"{color} {shape}" for color in colors for shape in shapes]
    triples = parse_concepts(concepts)
    backgrounds = [background] if isinstance(background, str) else list(background)
    check_names("background", backgrounds, BACKGROUNDS)
    counts = sequences_per_split or DEFAULT_SEQUENCES
    check_names("split", list(counts), dict.fromkeys(SPLITS))
    _check_clip_options(frames, objects_per_clip, radius_range, look_alikes, speed_range)
    motion = {"look_alikes": look_alikes if distractor else 0, "speed_range": speed_range}
    sample_size = size_sampler(image_size)

    out = check_output_dir(out_dir)
    summary = VideoSummary(out, num_categories=len(triples))
    with atomic_folder(out) as staging:   # a clip that fails leaves no half-written dataset
        for split, count in counts.items():
            videos, num_frames, num_objects = {}, 0, 0
            (staging / split).mkdir()
            for index in range(count):
                rng = np.random.default_rng([seed, SPLITS.index(split), index])
                width, height = sample_size(rng)
                name = f"seq{index:04d}"
                videos[name] = _write_clip(staging / split, name, rng, width, height, frames,
                                           triples, backgrounds, objects_per_clip,
                                           radius_range, motion, min_visible_pixels)
                num_frames += frames
                num_objects += len(videos[name]["objects"])
            write_file(staging / split / META_FILE, json.dumps({"videos": videos}, indent=1)
                       + "\n")
            summary.sequences[split] = count
            summary.frames[split] = num_frames
            summary.objects[split] = num_objects
    return summary


def _check_clip_options(frames: int, objects_per_clip: tuple[int, int], radius_range: tuple[float, float],
                        look_alikes: int, speed_range: tuple[float, float]) -> None:
    if frames < 2:
        raise DataError(f"synth: {frames} frames per clip; give at least 2", option="frames")
    low, high = objects_per_clip
    if not 1 <= low <= high <= MAX_OBJECTS:
        raise DataError(f"synth: objects per clip {low}..{high}; give 1 <= MIN <= MAX <= "
                        f"{MAX_OBJECTS} (ids are bytes, 255 is void)")
    low, high = radius_range
    if not 0 < low <= high <= 0.5:
        raise DataError(f"synth: radius range {low}..{high}; give 0 < MIN <= MAX <= 0.5")
    if not 0 <= look_alikes <= MAX_OBJECTS:
        raise DataError(f"synth: {look_alikes} look-alike distractors per clip; give 0 to {MAX_OBJECTS}",
                        option="look_alikes")
    low, high = speed_range
    if not 0 <= low <= high <= 0.5:
        raise DataError(f"synth: speed range {low}..{high}; give 0 <= MIN <= MAX <= 0.5 (a fraction of the "
                        f"shorter side per frame)", option="speed_range")


def _write_clip(split_dir: Path, name: str, rng: np.random.Generator, width: int, height: int,
                frames: int, triples, backgrounds: list[str], objects_per_clip, radius_range,
                motion: dict, min_visible_pixels: int) -> dict:
    """Draw one clip, write its frames and masks; returns its ``meta.json`` entry.
    ``motion``: ``_clip_tracks``' ``look_alikes`` and ``speed_range``."""
    backdrop = BACKGROUNDS[backgrounds[rng.integers(len(backgrounds))]](rng, width, height)
    count = int(rng.integers(objects_per_clip[0], objects_per_clip[1] + 1))
    for _ in range(_ATTEMPTS):
        tracks = _clip_tracks(rng, width, height, frames, triples, count, radius_range,
                              distractor=motion["look_alikes"] > 0, **motion)
        first_image, first_ids = render_frame(backdrop, tracks, 0)
        if all((first_ids == track.object_id).sum() >= min_visible_pixels
               for track in tracks if track.object_id):
            break
    else:
        raise DataError(f"synth: clip {name}: could not place {count} objects all visible on "
                        f"the first frame of {width} x {height} in {_ATTEMPTS} tries; give "
                        "fewer objects, smaller radii or larger frames")
    frames_dir, masks_dir = split_dir / FRAMES_DIR / name, split_dir / MASKS_DIR / name
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    seen: dict[int, list[str]] = {track.object_id: [] for track in tracks if track.object_id}
    for t in range(frames):
        image, ids = (first_image, first_ids) if t == 0 else render_frame(backdrop, tracks, t)
        stem = f"{t:05d}"
        _save(Image.fromarray(image), frames_dir / f"{stem}.jpg", "JPEG")
        mask = Image.fromarray(ids)
        mask.putpalette(davis_palette())    # 'L' becomes 'P': the stored indices are the ids
        _save(mask, masks_dir / f"{stem}.png", "PNG")
        for object_id in np.unique(ids):
            if object_id:
                seen[int(object_id)].append(stem)
    return _meta_entry(tracks, seen)


def _save(image: Image.Image, path: Path, format: str) -> None:
    with replacing_file(path) as temporary:   # never through a link
        options = {"quality": _JPEG_QUALITY} if format == "JPEG" else {}
        image.save(temporary, format=format, **options)


def _meta_entry(tracks: list[Track], seen: dict[int, list[str]]) -> dict:
    annotated = sorted((t for t in tracks if t.object_id), key=lambda t: t.object_id)
    entry: dict = {"objects": {str(t.object_id): {"category": t.category,
                                                   "frames": seen[t.object_id]}
                               for t in annotated}}
    entry["distractors"] = [{"category": t.category, "look_alike_of": "1"}
                            for t in tracks if not t.object_id]
    return entry


def render_frame(backdrop: np.ndarray, tracks: list[Track], t: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t``: uint8 (H, W, 3) image and uint8 (H, W) ids. Tracks are painted in order,
    each over the earlier ones, so the ids hold exactly each object's visible pixels (the
    distractor paints id 0)."""
    height, width = backdrop.shape[:2]
    image = backdrop.copy()
    ids = np.zeros((height, width), dtype=np.uint8)
    for track in tracks:
        (cx, cy), radius = track.centers[t], track.radii[t]
        polygon = np.round(SHAPES[track.shape](cx, cy, radius, track.angles[t]), 2)
        inside = rasterize(polygon, height, width)
        image[inside] = track.shades[t]
        ids[inside] = track.object_id
    return image, ids


def _clip_tracks(rng: np.random.Generator, width: int, height: int, frames: int, triples,
                 count: int, radius_range, distractor: bool, *, look_alikes: int = 1,
                 speed_range: tuple[float, float] = DEFAULT_SPEED) -> list[Track]:
    """The clip's tracks in drawing order: objects 1..count, then with ``distractor`` each of
    the ``look_alikes`` at a random depth. Object 2 crosses object 1's mid-clip place; object
    3 enters and leaves."""
    tracks: list[Track] = []
    for object_id in range(1, count + 1):
        _, shape, color = triples[rng.integers(len(triples))]
        track = _wanderer(rng, object_id, shape, color, width, height, frames, radius_range, speed_range)
        if object_id == 2:
            _aim_at(track, tracks[0].centers[frames // 2], frames // 2, width, height)
        elif object_id == 3:
            _cross_frame(rng, track, width, height, frames)
        tracks.append(track)
    for _ in range(look_alikes if distractor else 0):
        look_alike = _wanderer(rng, 0, tracks[0].shape, tracks[0].color, width, height,
                               frames, radius_range, speed_range)
        tracks.insert(int(rng.integers(len(tracks) + 1)), look_alike)
    return tracks


def _wanderer(rng: np.random.Generator, object_id: int, shape: str, color: str, width: int,
              height: int, frames: int, radius_range, speed_range=DEFAULT_SPEED) -> Track:
    """A shape bouncing around at a random speed, spinning, resizing and changing colour."""
    side = min(width, height)
    radius = rng.uniform(*radius_range) * side
    radii = radius * np.linspace(1.0, rng.uniform(*_SCALE_AT_END), frames)
    start = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    heading = rng.uniform(0, 2 * math.pi)
    velocity = rng.uniform(*speed_range) * side * np.array([math.cos(heading), math.sin(heading)])
    angles = rng.uniform(0, 2 * math.pi) + rng.uniform(-_SPIN, _SPIN) * np.arange(frames)
    base = np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, size=3), 0, 255)
    end = np.clip(base + rng.integers(-_COLOR_DRIFT, _COLOR_DRIFT + 1, size=3), 0, 255)
    shades = np.rint(np.linspace(base, end, frames)).astype(np.uint8)
    centers = bouncing_path(start, velocity, radii, width, height)
    return Track(object_id, shape, color, centers, radii, angles, shades)


def bouncing_path(start: np.ndarray, velocity: np.ndarray, radii: np.ndarray, width: int,
                  height: int) -> np.ndarray:
    """float (T, 2) centres from ``start`` moving by ``velocity`` px per frame, reflected
    off the borders so the shape (circumradius ``radii[t]``) stays inside the frame."""
    position, velocity = start.astype(np.float64).copy(), velocity.astype(np.float64).copy()
    centers = [position.copy()]
    for radius in radii[1:]:
        position += velocity
        for axis, limit in enumerate((width, height)):
            low, high = radius, limit - radius
            if low >= high:           # grown wider than the frame: kept centred
                position[axis] = limit / 2
                continue
            if position[axis] < low:
                position[axis], velocity[axis] = 2 * low - position[axis], -velocity[axis]
            elif position[axis] > high:
                position[axis], velocity[axis] = 2 * high - position[axis], -velocity[axis]
            # a step longer than the free space would reflect past the other border
            position[axis] = min(max(position[axis], low), high)
        centers.append(position.copy())
    return np.array(centers)


def _aim_at(track: Track, target: np.ndarray, frame: int, width: int, height: int) -> None:
    """Set ``track``'s velocity so that it is at ``target`` on ``frame`` (a straight line
    between two points inside the frame needs no bounce before then)."""
    velocity = (target - track.centers[0]) / max(frame, 1)
    track.centers = bouncing_path(track.centers[0], velocity, track.radii, width, height)


def _cross_frame(rng: np.random.Generator, track: Track, width: int, height: int,
                 frames: int) -> None:
    """Make ``track`` start half out of the frame on a random border and leave by the
    opposite one at ``_CROSSING`` of the clip, without bouncing."""
    axis = int(rng.integers(2))                       # 0: crosses horizontally, 1: vertically
    forward = bool(rng.integers(2))                   # from the low border to the high one
    extent = (width, height)[axis]
    travel = extent + max(track.radii[0], track.radii[-1])   # centre from border to out
    step = travel / max(_CROSSING * (frames - 1), 1)
    start = track.centers[0].copy()
    start[axis] = 0.0 if forward else float(extent)
    velocity = np.zeros(2)
    velocity[axis] = step if forward else -step
    track.centers = start + velocity * np.arange(frames)[:, None]
