"""Tensors read from disk, and the one test of whether tensors hold NaN or infinity.

Weights and optimiser states come back from safetensors files that may be truncated,
damaged, or written by a run that diverged. ``read_tensors`` turns each of those into one
line naming the file; ``nonfinite`` is the single finiteness check, used for weights read
from disk (adapters, model folders, checkpoints) and for model outputs (the loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from sam3_lora.errors import Sam3LoraError


def nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, in order.

    Tested through each tensor's float32 sum, which a NaN or infinity makes non-finite: one
    pass without a mask (12x faster than ``isfinite().all()`` on CPU: 0.3 s for SAM3's 840M
    weights) and one device-to-host transfer for all tensors. Finite values so large that
    their sum overflows (near 1e38) count as non-finite too; no usable weight is that large.
    """
    names = [name for name, tensor in tensors.items() if tensor.is_floating_point() and tensor.numel()]
    if not names:
        return []
    flags = [torch.isfinite(tensors[name].sum(dtype=torch.float32)) for name in names]
    finite = torch.stack([flag.to(flags[0].device) for flag in flags]).tolist()
    return [name for name, ok in zip(names, finite) if not ok]


def read_tensors(path: str | Path, error: type[Sam3LoraError] = Sam3LoraError) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``, all finite; anything else raises
    ``error`` (one line naming the file): missing, unreadable, not safetensors (truncated,
    damaged), or holding NaN or infinite values. Nothing is read with pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: not a readable safetensors file, truncated or damaged ({reason})") from None
    check_finite(tensors, path, error)
    return tensors


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | Path,
                 error: type[Sam3LoraError] = Sam3LoraError) -> None:
    """Raise ``error`` if any of ``tensors`` (weights from ``where``) holds NaN or infinity."""
    bad = nonfinite(tensors)
    if bad:
        raise error(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0][:120]}), "
                    f"so the weights are unusable (a diverged run?); use an earlier checkpoint, or "
                    f"retrain with a lower training.learning_rate")
