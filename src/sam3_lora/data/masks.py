"""Instance masks kept compact (COCO RLE) until collation, then decoded at the loss size.

A dataset sample carries each object's mask as a pycocotools RLE dict at the original image
resolution (a few hundred bytes instead of H x W). ``collate`` decodes the masks of one image
in one call and maps them onto the transformed input's geometry at the loss resolution
(``mask_size`` x ``mask_size``, 288 for a 1008 input), so full-resolution masks exist only
briefly, in the loader worker.

Pixel convention (pycocotools'): pixel (row i, col j) covers [j, j+1) x [i, i+1), so a polygon
spanning x in [10, 50] fills columns 10..49 and ``mask_to_box`` gives back x1=10, x2=50.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from scipy import ndimage

from sam3_lora.data.rle import RLE

if TYPE_CHECKING:
    from sam3_lora.data.transforms import Geometry

def decode_stack(rles: list[RLE], height: int, width: int) -> torch.Tensor:
    """RLEs of one image -> (n, H, W) uint8 in one pycocotools call; (0, H, W) for none."""
    if not rles:
        return torch.zeros(0, height, width, dtype=torch.uint8)
    stacked = coco_mask.decode(list(rles))  # (H, W, n), Fortran order
    return torch.from_numpy(stacked).permute(2, 0, 1)


def mask_to_box(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(H, W) or (n, H, W) masks -> (4,) or (n, 4) float boxes x1, y1, x2, y2 in pixels.

    x2/y2 are exclusive (last filled column/row + 1), so a mask's box has COCO's width.
    Empty masks give all zeros.
    """
    masks = torch.as_tensor(masks).bool()
    single = masks.dim() == 2
    masks = masks[None] if single else masks
    height, width = masks.shape[-2:]
    boxes = torch.zeros(masks.shape[0], 4)
    if masks.shape[0]:
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (n, H), (n, W)
        present = rows.any(dim=1)
        ys = torch.arange(height).expand_as(rows)
        xs = torch.arange(width).expand_as(cols)
        big = max(height, width) + 1
        boxes[:, 0] = torch.where(cols, xs, big).amin(dim=1)
        boxes[:, 1] = torch.where(rows, ys, big).amin(dim=1)
        boxes[:, 2] = torch.where(cols, xs, -1).amax(dim=1) + 1
        boxes[:, 3] = torch.where(rows, ys, -1).amax(dim=1) + 1
        boxes[~present] = 0
    return boxes[0] if single else boxes


def masks_to_input(masks: torch.Tensor, geometry: Geometry, mask_size: int) -> torch.Tensor:
    """(n, H, W) masks of the original image -> (n, mask_size, mask_size) bool on the input.

    Follows the image transform: resize onto the content area (scaled from the S x S input to
    ``mask_size``), flip if the image was flipped, pad bottom/right with False. Nearest-exact
    sampling on uint8 keeps this cheap; its misplacement is at most half a mask pixel.
    """
    count = masks.shape[0]
    out = torch.zeros(count, mask_size, mask_size, dtype=torch.bool)
    if count == 0:
        return out
    scale = mask_size / geometry.canvas_size
    content_h = max(1, min(mask_size, round(geometry.content_size[0] * scale)))
    content_w = max(1, min(mask_size, round(geometry.content_size[1] * scale)))
    resized = F.interpolate(
        masks[None].to(torch.uint8), size=(content_h, content_w), mode="nearest-exact"
    )[0]
    if geometry.flipped:
        resized = resized.flip(-1)
    out[:, :content_h, :content_w] = resized.bool()
    return out


def rles_to_input(rles: list[RLE | None], geometry: Geometry, mask_size: int) -> torch.Tensor:
    """Compact masks of one image (None for box-only objects) -> (n, m, m) bool on the input.

    Box-only objects get an all-False mask; their ``has_mask`` flag keeps them out of the
    mask loss.
    """
    height, width = geometry.orig_size
    present = [i for i, rle in enumerate(rles) if rle is not None]
    out = torch.zeros(len(rles), mask_size, mask_size, dtype=torch.bool)
    if present:
        decoded = decode_stack([rles[i] for i in present], height, width)
        out[present] = masks_to_input(decoded, geometry, mask_size)
    return out


def boundary_distances(region: np.ndarray) -> np.ndarray:
    """(H, W) bool region (a mask, or the errors of a prediction) -> (H, W) distance of each
    of its pixels to the nearest pixel outside it, the image border counting as outside (RITM
    pads by one pixel before the transform, so a region along the border is not treated as
    deeper than it is). Its largest value is where RITM, and ``validate``, click."""
    padded = np.pad(region, 1, mode="constant")
    # RITM: cv2.distanceTransform(DIST_L2, precise) in float32; scipy's is the same exact
    # Euclidean distance, in float64.
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
