"""Memory and speed: activation checkpointing, peak memory, and the peak FLOP/s of known
accelerators for the MFU meter."""

from __future__ import annotations

import resource
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Dense bf16 peak of known accelerators, for the MFU meter (TFLOP/s).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def enable_activation_checkpointing(model: nn.Module, every: int) -> int:
    """Recompute every ``every``-th ViT block in backward; returns how many blocks."""
    if every <= 0:
        return 0
    sam3 = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = sam3.vision_encoder.backbone.layers
    for index, block in enumerate(blocks):
        if index % every == 0:
            block.gradient_checkpointing = True
            block._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    return len(range(0, len(blocks), every))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak TFLOP/s of ``device`` if it is a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
