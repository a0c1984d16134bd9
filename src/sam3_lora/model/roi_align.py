"""A pure-torch ``roi_align`` for box prompts on machines without torchvision.

SAM3's geometry encoder pools image features inside each box prompt with
``torchvision.ops.roi_align``. CPU machines cannot install torchvision (the registry's build
is CUDA-only), so ``install_fallback`` gives transformers this implementation when, and only
when, torchvision is absent. It follows torchvision's kernel (``aligned=False`` and
``aligned=True``, adaptive ``sampling_ratio=-1``): bilinear samples on a regular grid in each
bin, averaged. Sampling is separable in y and x, so each box is two small interpolation
matrices and one einsum; gradients flow to the features and the box coordinates.
"""

from __future__ import annotations

import math
import sys
import types

import torch


def _interpolation_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) sample coordinates -> (n, size) bilinear weights, torchvision's border rules.

    Samples beyond one pixel outside the map read zero; others clamp to the edge.
    """
    valid = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coords = torch.where(at_edge, low.to(coords.dtype), coords)
    frac = coords - low.to(coords.dtype)
    weights = coords.new_zeros(coords.shape[0], size)
    weights.scatter_add_(1, low[:, None], (1.0 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    return weights * valid[:, None].to(weights.dtype)


def _bin_samples(start: torch.Tensor, length: torch.Tensor, bins: int, grid: int) -> torch.Tensor:
    """Sample coordinates of ``bins`` bins of ``grid`` samples each: (bins * grid,)."""
    bin_size = length / bins
    steps = torch.arange(bins * grid, device=start.device, dtype=start.dtype)
    bin_index, sub_index = steps // grid, steps % grid
    return start + bin_index * bin_size + (sub_index + 0.5) * bin_size / grid


def _pool_one(features: torch.Tensor, box: torch.Tensor, out_h: int, out_w: int,
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """features (C, H, W), box (4,) xyxy -> (C, out_h, out_w)."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = box * spatial_scale - offset
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(float(height.detach()) / out_h), 1)
    grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(float(width.detach()) / out_w), 1)
    rows = _interpolation_matrix(_bin_samples(y1, height, out_h, grid_h), features.shape[1])
    cols = _interpolation_matrix(_bin_samples(x1, width, out_w, grid_w), features.shape[2])
    samples = torch.einsum("yh,chw,xw->cyx", rows, features, cols)
    return samples.reshape(-1, out_h, grid_h, out_w, grid_w).mean(dim=(2, 4))


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Same call as ``torchvision.ops.roi_align``.

    input: (N, C, H, W); boxes: a list of N tensors (K_i, 4) xyxy, or one (K, 5) tensor whose
    first column is the batch index. Returns (sum K_i, C, out_h, out_w) in ``input``'s dtype.
    Half-precision inputs are computed in float32 outside autocast, as torchvision's kernel is
    under autocast (SAM3 hands it float16 features and boxes when its weights are bfloat16).
    """
    dtype = input.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast(input.device.type, enabled=False):
        boxes = boxes.to(compute) if isinstance(boxes, torch.Tensor) else [b.to(compute) for b in boxes]
        return _roi_align(input.to(compute), boxes, output_size, spatial_scale, sampling_ratio, aligned).to(dtype)


def _roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float,
               sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """``roi_align`` on float32 tensors."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if isinstance(boxes, torch.Tensor):
        batch_index, coords = boxes[:, 0].long(), boxes[:, 1:]
    else:
        batch_index = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
        coords = torch.cat(list(boxes)) if len(boxes) else input.new_zeros(0, 4)
    pooled = [
        _pool_one(input[int(i)], box.to(input.dtype), out_h, out_w, spatial_scale, sampling_ratio, aligned)
        for i, box in zip(batch_index.tolist(), coords)
    ]
    if not pooled:
        return input.new_zeros(0, input.shape[1], out_h, out_w)
    return torch.stack(pooled)


def install_fallback() -> bool:
    """Give transformers' SAM3 this ``roi_align`` if torchvision is absent. True if installed."""
    # The module itself: without torchvision, ``from transformers.models.sam3 import
    # modeling_sam3`` can give transformers' lazy placeholder instead, unless Sam3Model
    # happened to be imported first.
    from transformers.models.sam3 import modeling_sam3
    from transformers.utils import is_torchvision_available

    if is_torchvision_available() or hasattr(modeling_sam3, "torchvision"):
        return False
    # modeling_sam3 calls ``torchvision.ops.roi_align`` through a module global that is only
    # bound when torchvision imports; binding a stand-in there touches nothing else.
    stand_in = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=roi_align))
    modeling_sam3.torchvision = stand_in
    sys.modules[__name__].installed = True
    return True


installed = False
