"""Deterministic synthetic COCO datasets of coloured shapes, for demos, tests and ablations.

Every category is a concept "<colour> <shape>" (e.g. "red circle"). Each image holds a few
shapes drawn in order over a background, so later shapes hide parts of earlier ones; each
object's mask is exactly its visible pixels, and objects hidden (almost) entirely are dropped.
Unoccluded objects are written as polygons, occluded ones as RLE, so both forms appear.

Pixels are painted from the same rasterisation pycocotools uses to read annotations back,
so a decoded annotation matches the pixels of its colour exactly.

Extending: ``@register_shape("name")`` on a function ``(cx, cy, radius, angle) -> (N, 2)``
vertices adds a shape; ``COLORS`` and ``@register_background`` do the same for colours and
backgrounds. A "target domain" is then just another call with other shapes/backgrounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.data.rle import as_compressed, encode
from sam3_lora.data.scaffold import (
    ANNOTATION_FILE,
    SPLITS,
    LayoutSummary,
    category_list,
    prepare_output_dir,
    write_annotation_file,
)
from sam3_lora.errors import DataError
from sam3_lora.files import replacing_file

ShapeFn = Callable[[float, float, float, float], np.ndarray]
"""(cx, cy, radius, angle) -> (N, 2) polygon vertices in pixels. ``radius`` is the
circumradius in pixels; ``angle`` a rotation in radians."""

BackgroundFn = Callable[[np.random.Generator, int, int], np.ndarray]
"""(rng, width, height) -> uint8 array (height, width, 3)."""

SHAPES: dict[str, ShapeFn] = {}
BACKGROUNDS: dict[str, BackgroundFn] = {}

# Saturated colours, far from the muted backgrounds so every concept stays recognisable.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 215),
    "magenta": (225, 50, 185),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

ImageSize = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


def register_shape(name: str) -> Callable[[ShapeFn], ShapeFn]:
    """Decorator adding a shape function to ``SHAPES`` under ``name``."""

    def add(fn: ShapeFn) -> ShapeFn:
        SHAPES[name] = fn
        return fn

    return add


def register_background(name: str) -> Callable[[BackgroundFn], BackgroundFn]:
    """Decorator adding a background function to ``BACKGROUNDS`` under ``name``."""

    def add(fn: BackgroundFn) -> BackgroundFn:
        BACKGROUNDS[name] = fn
        return fn

    return add


def _star_polygon(cx, cy, radii: Sequence[float], angle: float, phase: float) -> np.ndarray:
    """Vertices at evenly spaced angles, vertex k at distance ``radii[k]`` from the centre."""
    k = np.arange(len(radii))
    theta = angle + phase + 2 * math.pi * k / len(radii)
    radii = np.asarray(radii, dtype=np.float64)
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


@register_shape("circle")
def circle(cx, cy, r, angle):
    return _star_polygon(cx, cy, [r] * 48, angle, 0.0)


@register_shape("square")
def square(cx, cy, r, angle):
    return _star_polygon(cx, cy, [r] * 4, angle, math.pi / 4)


@register_shape("triangle")
def triangle(cx, cy, r, angle):
    return _star_polygon(cx, cy, [r] * 3, angle, -math.pi / 2)


@register_shape("hexagon")
def hexagon(cx, cy, r, angle):
    return _star_polygon(cx, cy, [r] * 6, angle, 0.0)


@register_shape("star")
def star(cx, cy, r, angle):
    return _star_polygon(cx, cy, [r, 0.45 * r] * 5, angle, -math.pi / 2)


@register_shape("cross")
def cross(cx, cy, r, angle):
    a, b = 0.3 * r, 0.95 * r  # arm half-width and half-length
    outline = np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
         (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return outline @ rotation.T + (cx, cy)


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A greyish colour (grey level 80-200, slight tint) that no shape colour resembles."""
    return np.clip(rng.integers(80, 201) + rng.integers(-20, 21, size=3), 0, 255)


@register_background("plain")
def plain(rng, width, height):
    return np.broadcast_to(_muted_color(rng), (height, width, 3)).astype(np.uint8)


@register_background("noise")
def noise(rng, width, height):
    base = _muted_color(rng).astype(np.float32)
    grain = rng.normal(0.0, 28.0, size=(height, width, 3)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


@register_background("stripes")
def stripes(rng, width, height):
    first, second = _muted_color(rng), _muted_color(rng)
    period, angle = rng.uniform(8, 32), rng.uniform(0, math.pi)
    y, x = np.mgrid[0:height, 0:width]
    phase = (x * math.cos(angle) + y * math.sin(angle)) / period
    return np.where((phase % 1.0 < 0.5)[..., None], first, second).astype(np.uint8)


@register_background("checker")
def checker(rng, width, height):
    first, second = _muted_color(rng), _muted_color(rng)
    cell = int(rng.integers(8, 33))
    y, x = np.mgrid[0:height, 0:width]
    return np.where((((x // cell) + (y // cell)) % 2 == 0)[..., None], first, second).astype(
        np.uint8
    )


@register_background("gradient")
def gradient(rng, width, height):
    first, second = _muted_color(rng), _muted_color(rng)
    t = np.linspace(0.0, 1.0, width)[None, :, None]
    row = (1 - t) * first + t * second
    return np.broadcast_to(row, (height, width, 3)).astype(np.uint8)


@dataclass
class SceneObject:
    """One drawn shape: its concept, outline, whole mask and the part left visible."""

    category_id: int
    polygon: np.ndarray
    """(N, 2) vertices in pixels, rounded to 0.01 px (the values written to the file)."""
    full_mask: np.ndarray
    visible_mask: np.ndarray
    """bool (height, width): ``full_mask`` minus every shape drawn after it."""


@dataclass
class Scene:
    image: np.ndarray
    """uint8 (height, width, 3)."""
    objects: list[SceneObject]
    """Kept objects in drawing order (objects with too few visible pixels removed)."""


def rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (height, width) mask of a polygon, exactly as pycocotools decodes it."""
    rles = mask_utils.frPyObjects([polygon.ravel().tolist()], height, width)
    return mask_utils.decode(rles)[:, :, 0].astype(bool)


def compose_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    concepts: Sequence[tuple[int, str, str]],
    backgrounds: Sequence[str],
    objects_per_image: tuple[int, int],
    radius_range: tuple[float, float],
    min_visible_pixels: int,
) -> Scene:
    """Draw one image. ``concepts`` holds (category_id, shape, colour) triples;
    ``radius_range`` is the circumradius as a fraction of min(width, height)."""
    image = BACKGROUNDS[backgrounds[rng.integers(len(backgrounds))]](rng, width, height).copy()
    drawn: list[SceneObject] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        category_id, shape, color = concepts[rng.integers(len(concepts))]
        radius = rng.uniform(*radius_range) * min(width, height)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        polygon = np.round(SHAPES[shape](cx, cy, radius, rng.uniform(0, 2 * math.pi)), 2)
        mask = rasterize(polygon, height, width)
        shade = np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, size=3), 0, 255)
        image[mask] = shade
        drawn.append(SceneObject(category_id, polygon, mask, mask))
    covered = np.zeros((height, width), dtype=bool)
    for obj in reversed(drawn):  # what later shapes cover is hidden in earlier ones
        obj.visible_mask = obj.full_mask & ~covered
        covered |= obj.full_mask
    kept = [obj for obj in drawn if obj.visible_mask.sum() >= min_visible_pixels]
    return Scene(image, kept)


def scene_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """COCO annotations: a polygon when the shape is whole, else the RLE of its visible part."""
    annotations = []
    for offset, obj in enumerate(scene.objects):
        visible = encode(obj.visible_mask)
        whole = bool(np.array_equal(obj.visible_mask, obj.full_mask))
        segmentation = [obj.polygon.ravel().tolist()] if whole else visible
        annotations.append(
            {
                "id": first_id + offset,
                "image_id": image_id,
                "category_id": obj.category_id,
                "bbox": [float(v) for v in mask_utils.toBbox(as_compressed(visible))],
                "area": int(obj.visible_mask.sum()),
                "segmentation": segmentation,
                "iscrowd": 0,
            }
        )
    return annotations


def check_names(kind: str, names: Sequence[str], known: dict) -> None:
    """``DataError`` listing the choices when a name is not a key of ``known``."""
    for name in names:
        if name not in known:
            raise DataError(f"synth: unknown {kind} {name!r}; choose from {', '.join(known)}")


def _check_ranges(objects_per_image: tuple[int, int], radius_range: tuple[float, float]) -> None:
    low, high = objects_per_image
    if not 0 <= low <= high:
        raise DataError(f"synth: objects per image {low}..{high}; give 0 <= MIN <= MAX")
    low, high = radius_range
    if not 0 < low <= high <= 0.5:  # above half the shorter side a shape cannot fit
        raise DataError(f"synth: radius range {low}..{high}; give 0 < MIN <= MAX <= 0.5")


def size_sampler(image_size: ImageSize) -> Callable[[np.random.Generator], tuple[int, int]]:
    """image_size: int (square), (w, h), or ((min_w, min_h), (max_w, max_h)) in pixels."""
    if isinstance(image_size, int):
        return lambda rng: (image_size, image_size)
    low, high = image_size
    if isinstance(low, int) and isinstance(high, int):
        return lambda rng: (low, high)
    (min_w, min_h), (max_w, max_h) = low, high
    return lambda rng: (int(rng.integers(min_w, max_w + 1)), int(rng.integers(min_h, max_h + 1)))


def synthesize(
    out_dir: str | Path,
    *,
    shapes: Sequence[str] = ("circle", "square", "triangle"),
    colors: Sequence[str] = ("red", "green", "blue"),
    concepts: Sequence[str] | None = None,
    background: str | Sequence[str] = "plain",
    images_per_split: dict[str, int] | None = None,
    image_size: ImageSize = 224,
    objects_per_image: tuple[int, int] = (1, 5),
    radius_range: tuple[float, float] = (0.08, 0.25),
    min_visible_pixels: int = 20,
    seed: int = 0,
) -> LayoutSummary:
    """Write a COCO dataset of coloured shapes into the empty folder ``out_dir``.

    Categories are every "<colour> <shape>" pair (colours outer, ids from 1), or exactly
    ``concepts`` when given (each "<colour> <shape>"), identical in every split.
    ``background`` is one style or a list drawn from per image (see ``BACKGROUNDS``).
    ``images_per_split`` defaults to ``{"train": 24, "valid": 8, "test": 8}``.
    ``objects_per_image`` is an inclusive (min, max) drawn per image; ``radius_range`` is
    the shape circumradius as a fraction of the image's shorter side. Objects with fewer
    than ``min_visible_pixels`` visible pixels are dropped (their slivers stay unlabelled).

    Each image draws from its own generator seeded by (seed, split, index), so the same
    arguments give byte-identical files, and changing one split's count leaves the others.
    """
    backgrounds = [background] if isinstance(background, str) else list(background)
    if concepts is None:
        concepts = [f"{color} {shape}" for color in colors for shape in shapes]
    triples = parse_concepts(concepts)
    check_names("background", backgrounds, BACKGROUNDS)
    _check_ranges(objects_per_image, radius_range)
    counts = images_per_split or {"train": 24, "valid": 8, "test": 8}
    check_names("split", list(counts), dict.fromkeys(SPLITS))
    sample_size = size_sampler(image_size)

    out = prepare_output_dir(out_dir)
    categories = category_list(list(concepts))
    summary = LayoutSummary(out, num_categories=len(categories))
    info = {"description": "sam3-lora synthetic shapes", "seed": seed,
            "backgrounds": backgrounds}
    for split, count in counts.items():
        split_dir = out / split
        split_dir.mkdir()
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, SPLITS.index(split), index])
            width, height = sample_size(rng)
            scene = compose_scene(rng, width, height, triples, backgrounds,
                                  objects_per_image, radius_range, min_visible_pixels)
            file_name = f"{index:06d}.png"
            with replacing_file(split_dir / file_name) as temporary:  # never through a link
                Image.fromarray(scene.image).save(temporary, format="PNG")
            images.append({"id": index + 1, "file_name": file_name,
                           "width": width, "height": height})
            annotations += scene_annotations(scene, index + 1, len(annotations) + 1)
        write_annotation_file(split_dir / ANNOTATION_FILE, images, annotations, categories, info)
        summary.add_split(split, len(images), len(annotations))
    return summary


def parse_concepts(concepts: Sequence[str]) -> list[tuple[int, str, str]]:
    """"red circle" -> (category_id, "circle", "red"), ids from 1 in the given order."""
    triples = []
    for category_id, concept in enumerate(concepts, 1):
        color, _, shape = concept.partition(" ")
        check_names("colour", [color], COLORS)
        check_names("shape", [shape], SHAPES)
        triples.append((category_id, shape, color))
    if not triples:
        raise DataError("synth: no concepts; give at least one shape and one colour")
    return triples
