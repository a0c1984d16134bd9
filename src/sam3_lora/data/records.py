"""Plain records that every data module shares: what a COCO split holds once parsed.

The reader (``data.coco.split``) turns an annotation file into a ``CocoSplit``; validation reports
its ``problems``; the dataset turns its images into (image, prompt) queries; converters and
the synthetic generator write files that read back into the same records.
Coordinates are COCO's: pixels, boxes ``[x, y, w, h]`` with the origin at the top-left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class ObjectRecord:
    """One annotated instance."""

    id: int
    category_id: int
    bbox: list[float]
    """[x, y, w, h] in pixels; derived from the mask when the file gave only a mask."""
    segmentation: Any = None
    """Polygons (list of flat [x1, y1, x2, y2, ...] lists), an RLE dict (``counts`` str or
    list, ``size`` [h, w]), or None for a box-only object (no mask loss)."""
    iscrowd: bool = False
    area: float = 0.0


@dataclass
class ImageRecord:
    """One image of a split and its objects."""

    id: int
    file_name: str
    path: Path
    """Resolved path inside the split folder (never outside it)."""
    width: int
    height: int
    objects: list[ObjectRecord] = field(default_factory=list)
    neg_category_ids: list[int] = field(default_factory=list)
    """Categories verified absent (LVIS style); empty means: every absent category is."""
    not_exhaustive_category_ids: list[int] = field(default_factory=list)
    """Categories whose instances are not all annotated: never used as negatives."""


@dataclass
class Problem:
    """One thing wrong with a dataset, with where it is."""

    severity: Literal["error", "warning"]
    code: str
    """Stable short name, e.g. ``missing_image``, ``duplicate_id``, ``polygon_too_short``."""
    file: str
    """The annotation file (or image file) the problem is in."""
    message: str
    """One line naming the id and the fix."""
    image_id: int | None = None
    annotation_id: int | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.message}"


class HasProblems:
    """``errors`` and ``warnings`` of a record whose ``all_problems`` lists its problems."""

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "warning"]


@dataclass
class CocoSplit(HasProblems):
    """A parsed split: images with their objects, category names, and problems found."""

    name: str
    root: Path
    annotation_path: Path
    categories: dict[int, str]
    """Category id -> name, in file order; Roboflow's empty supercategory (id 0) removed."""
    images: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)
