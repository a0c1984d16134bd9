"""Tiny DAVIS-layout folders written by the tests: a few frames of a few pixels."""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (16, 12)
"""(width, height) of the test frames."""


def write_frame(path: Path, size=SIZE, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def write_mask(path: Path, ids: np.ndarray, mode: str = "P") -> Path:
    """An index mask of ``ids`` (uint8 (H, W)) saved as a PNG in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8))
    if mode == "P":
        image.putpalette([channel for i in range(256) for channel in (i, 255 - i, i // 2)])
    elif mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


def boxes_mask(boxes: dict[int, tuple[int, int, int, int]], size=SIZE) -> np.ndarray:
    """uint8 (H, W) ids: each id fills its (x0, y0, x1, y1) box."""
    ids = np.zeros(size[::-1], dtype=np.uint8)
    for object_id, (x0, y0, x1, y1) in boxes.items():
        ids[y0:y1, x0:x1] = object_id
    return ids


def write_clip(root: Path, name: str, masks: list[dict | None], *, size=SIZE,
               names: list[str] | None = None) -> Path:
    """Frames ``JPEGImages/name/00000.jpg ...`` and, where ``masks[t]`` is not None, a
    palette mask of its boxes (``boxes_mask``). Returns ``root``."""
    names = names or [f"{t:05d}" for t in range(len(masks))]
    for stem, boxes in zip(names, masks):
        write_frame(root / "JPEGImages" / name / f"{stem}.jpg", size)
        if boxes is not None:
            write_mask(root / "Annotations" / name / f"{stem}.png", boxes_mask(boxes, size))
    return root


TWO_OBJECTS = [{1: (0, 0, 4, 4), 2: (8, 6, 12, 10)}, {1: (1, 1, 5, 5)}, {2: (9, 6, 13, 10)}]
"""Three frames: objects 1 and 2 on the first, 1 alone on the second, 2 alone on the third."""
