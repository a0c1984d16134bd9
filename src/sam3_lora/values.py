"""Type tests for values read from JSON files (COCO annotations, predictions, adapter configs).

One rule everywhere: ``true``/``false`` are not numbers (Python's ``bool`` is an ``int``), and
whether NaN, infinities and integers too large for a float are acceptable is each caller's
decision, made explicitly with ``is_finite``.
"""

from __future__ import annotations

import sys
from typing import Any


def is_int(value: Any) -> bool:
    """A JSON integer (``true``/``false`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A JSON number, integer or float (``true``/``false`` are not). NaN, infinities and
    integers of any size pass: use ``is_finite`` where they must not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number usable as a float: not NaN, not infinite, and (an integer) not beyond the
    float range, where ``math.isfinite`` and ``float()`` raise ``OverflowError``."""
    return is_number(value) and abs(value) <= sys.float_info.max
