"""COCO run-length encodings (RLE): the one place masks become RLE and back.

Two forms travel through the code: pycocotools wants ``counts`` as bytes ("compressed"),
JSON files hold it as str. ``encode`` gives the JSON form of a mask, ``as_json`` and
``as_compressed`` convert between the two, ``to_rle`` turns any COCO segmentation (polygons,
uncompressed or compressed RLE) into the compressed form, ``decode`` back into a mask.
numpy and pycocotools only: the torch-free ONNX engine writes its results with it too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

RLE = dict[str, Any]
"""{"size": [h, w], "counts": bytes}: a compressed COCO run-length encoding."""


def to_rle(segmentation: Any, height: int, width: int) -> RLE | None:
    """Any COCO segmentation -> one compressed RLE of an ``height`` x ``width`` image.

    Accepts polygons (list of flat [x1, y1, x2, y2, ...] lists, or one flat list), an
    uncompressed RLE (``counts`` a list of run lengths) or a compressed one (``counts`` a
    str or bytes). Returns None when there is no usable mask (None, [], only polygons of
    fewer than 3 points): such an object is box-only. Raises ValueError when an RLE's
    ``size`` is not [height, width], TypeError when its ``counts`` is of no known type.
    """
    if segmentation is None:
        return None
    if isinstance(segmentation, dict):
        return _rle_from_dict(segmentation, height, width)
    polygons = list(segmentation)
    if polygons and not isinstance(polygons[0], (list, tuple)):
        polygons = [polygons]  # some exporters write a single polygon unnested
    # Fewer than 3 points is no area; and frPyObjects reads a 4-number list as a *box*.
    polygons = [[float(v) for v in poly] for poly in polygons if len(poly) >= 6]
    if not polygons:
        return None
    return coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))


def _rle_from_dict(rle: dict, height: int, width: int) -> RLE:
    size = [int(v) for v in rle.get("size", [])]
    if size != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
    counts = rle.get("counts")
    if isinstance(counts, list):  # uncompressed: encode it
        return coco_mask.frPyObjects({"size": size, "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise TypeError(f"RLE counts must be a list, str or bytes, got {type(counts).__name__}")
    return {"size": size, "counts": counts}


def decode(rle: RLE) -> np.ndarray:
    """One RLE -> (H, W) uint8 mask of 0/1."""
    return coco_mask.decode(rle)


def encode(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> COCO RLE in its JSON form (str ``counts``)."""
    return as_json(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))


def as_json(rle: RLE) -> dict:
    """An RLE with ``counts`` as str and ``size`` as a list: what a JSON file holds."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def as_compressed(rle: dict) -> RLE:
    """An RLE with ``counts`` as bytes: what pycocotools' ``area``, ``iou`` and ``decode`` take."""
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
