"""Typed reads of JSON values for the COCO reader, and the problem list it fills.

Every getter returns either the value, cleaned, or an ``Invalid`` saying which problem code
applies and why, so callers decide the severity (error: the item is left out; warning: the
field is ignored or repaired) and the wording of the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from sam3_lora.data.records import Problem
from sam3_lora.values import is_int, is_number

MAX_ID = 2**63 - 1
"""Ids end up in int64 tensors and in pycocotools, so larger ones cannot be used."""

MAX_COORDINATE = 1e6
"""Pixels. No real image is this large, so a coordinate beyond it is a corrupt value; it
also keeps pycocotools' polygon rasteriser (memory grows with the perimeter) safe."""

_MISSING = object()


@dataclass(frozen=True)
class Invalid:
    """Why a value cannot be used: a problem code and a reason to put in the message."""

    code: Literal["missing_key", "wrong_type", "bad_number", "bad_value"]
    reason: str


@dataclass
class Findings:
    """The problems found in one annotation file, in the order found."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def about(self, where: str, image_id: int | None = None,
              annotation_id: int | None = None) -> Reporter:
        """A reporter whose messages start with ``where`` (e.g. ``annotation id 7``)."""
        return Reporter(self, where, image_id, annotation_id)


@dataclass
class Reporter:
    """Adds problems about one entry of the file (an image, an annotation, a category)."""

    findings: Findings
    where: str
    image_id: int | None = None
    annotation_id: int | None = None

    def error(self, code: str, text: str, file: str | None = None) -> None:
        self._add("error", code, text, file)

    def warning(self, code: str, text: str, file: str | None = None) -> None:
        self._add("warning", code, text, file)

    def invalid(self, problem: Invalid, fix: str, severity: str = "error") -> None:
        self._add(severity, problem.code, f"{problem.reason}; {fix}", None)

    def _add(self, severity: str, code: str, text: str, file: str | None) -> None:
        self.findings.problems.append(Problem(
            severity=severity,  # type: ignore[arg-type]
            code=code,
            file=file or self.findings.file,
            message=f"{self.where}: {text}",
            image_id=self.image_id,
            annotation_id=self.annotation_id,
        ))


def describe(value: Any) -> str:
    """A short rendering of a JSON value for messages (long values cut at 40 characters)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python agrees to print
        text = "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


def get_id(entry: dict, key: str) -> int | Invalid:
    """``entry[key]`` as an id: an integer that fits int64."""
    value = entry.get(key, _MISSING)
    if value is _MISSING or value is None:
        return Invalid("missing_key", f"'{key}' is missing")
    if not is_int(value):
        return Invalid("wrong_type", f"'{key}' is {describe(value)}, not an integer")
    if abs(value) > MAX_ID:
        return Invalid("bad_number", f"'{key}' does not fit in 64 bits")
    return value


def get_text(entry: dict, key: str) -> str | Invalid:
    """``entry[key]`` as a non-empty string."""
    value = entry.get(key, _MISSING)
    if value is _MISSING or value is None:
        return Invalid("missing_key", f"'{key}' is missing")
    if not isinstance(value, str):
        return Invalid("wrong_type", f"'{key}' is {describe(value)}, not a string")
    if not value.strip():
        return Invalid("bad_value", f"'{key}' is empty")
    return value


def get_size(entry: dict, key: str) -> int | Invalid:
    """``entry[key]`` as an image side in pixels (a positive integer; 640.0 is accepted)."""
    value = entry.get(key, _MISSING)
    if value is _MISSING or value is None:
        return Invalid("missing_key", f"'{key}' is missing")
    if not is_number(value) or (isinstance(value, float) and not value.is_integer()):
        return Invalid("wrong_type", f"'{key}' is {describe(value)}, not an integer")
    if not 0 < value <= MAX_COORDINATE:
        return Invalid("bad_number", f"'{key}' is {describe(value)}, not a pixel count")
    return int(value)


def get_coordinates(value: Any, key: str) -> list[float] | Invalid:
    """A list of pixel coordinates: finite numbers within +-``MAX_COORDINATE``."""
    if not isinstance(value, list):
        return Invalid("wrong_type", f"'{key}' is {describe(value)}, not a list of numbers")
    for number in value:
        if not is_number(number):
            return Invalid("wrong_type", f"'{key}' holds {describe(number)}, not a number")
        if not _is_sane_coordinate(number):
            return Invalid("bad_number", f"'{key}' holds {describe(number)}, not a pixel position")
    return [float(number) for number in value]


def get_box(value: Any) -> list[float] | Invalid:
    """A COCO box: exactly 4 sane coordinates [x, y, w, h]."""
    coordinates = get_coordinates(value, "bbox")
    if isinstance(coordinates, Invalid):
        return coordinates
    if len(coordinates) != 4:
        return Invalid("wrong_type", f"'bbox' has {len(coordinates)} numbers, not 4 [x, y, w, h]")
    return coordinates


def get_id_list(entry: dict, key: str) -> list[int] | Invalid | None:
    """An optional list of ids (LVIS ``neg_category_ids``); None when absent."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(is_int(item) for item in value):
        return Invalid("wrong_type", f"'{key}' is {describe(value)}, not a list of integer ids")
    return list(value)


def _is_sane_coordinate(number: float) -> bool:
    # Comparing before any float() keeps integers too large for a float from overflowing.
    if isinstance(number, float) and not math.isfinite(number):
        return False
    return -MAX_COORDINATE <= number <= MAX_COORDINATE
