"""Memory and speed: activation checkpointing, peak memory, and the peak FLOP/s of known
accelerators for the MFU meter."""

from __future__ import annotations

import resource
from functools import partial
from types import MethodType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3_lora.config import LoRAConfig, load_config
from sam3_lora.lora.adapter import architecture
from sam3_lora.model.loading import load_sam3_config

# Dense bf16 peak of known accelerators, for the MFU meter (TFLOP/s).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def enable_activation_checkpointing(model: nn.Module, every: int) -> int:
    """Recompute every ``every``-th layer of each of SAM3's deep stacks in backward instead of
    keeping its activations (``every`` 0: none, and any recomputing set before is undone).
    A stack is recomputed only where backward passes through it, i.e. where a trainable weight
    sits in it or in a module that feeds it: the ViT's blocks when the ViT trains, the DETR
    encoder's and decoder's layers (run per text query over every image token) when they or
    anything before them (ViT, neck, text or geometry encoder) train, the decoder's box
    position MLPs when they train. Returns how many layers (or MLPs)."""
    stacks = _recomputable_stacks(_sam3(model))
    for layers, _ in stacks:
        for layer in layers:
            recompute_in_backward(layer, False)
    if every <= 0:
        return 0
    chosen = [layer for layers, feeding in stacks if _trains(feeding)
              for index, layer in enumerate(layers) if index % every == 0]
    for layer in chosen:
        recompute_in_backward(layer)
    return len(chosen)


def _sam3(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _recomputable_stacks(sam3: nn.Module) -> list[tuple[list[nn.Module], list[nn.Module]]]:
    """SAM3's stacks worth recomputing, each with the modules whose trainable weights put it on
    backward's path (itself and what feeds it). Measured (BENCHMARKS.md, "Activation
    checkpointing of the DETR heads"): with the heads preset at 336 px the DETR decoder keeps
    0.84 GB and the encoder 0.45 GB for backward, the mask decoder's pixel decoder 0.07 GB (the
    first freed in backward, so below a DETR layer's recompute) and the geometry encoder nothing
    with text prompts (a few box tokens otherwise): those two are left as they are. The DETR
    decoder's two box relative-position MLPs (``box_rpb_embed_x`` / ``_y``, run at every decoder
    layer on 200 queries x the feature map's width or height) sit outside its layers; with LoRA
    in them (``target_modules: [all]``: the heads preset) they kept 1.36 GB at 1008 px, so they
    are a stack of their own, on backward's path only when they train (their input, the
    reference boxes, is detached). The tracker has no DETR stacks; its ViT is recomputed as the
    detector's."""
    vision = sam3.vision_encoder
    stacks = [(list(vision.backbone.layers), [vision.backbone])]
    if hasattr(sam3, "detr_encoder"):
        prompts = [vision, sam3.text_encoder, sam3.text_projection, sam3.geometry_encoder]
        decoder = sam3.detr_decoder
        position_mlps = [decoder.box_rpb_embed_x, decoder.box_rpb_embed_y]
        stacks += [(list(sam3.detr_encoder.layers), [*prompts, sam3.detr_encoder]),
                   (list(decoder.layers), [*prompts, sam3.detr_encoder, decoder]),
                   (position_mlps, position_mlps)]
    return stacks


def _trains(modules: list[nn.Module]) -> bool:
    return any(p.requires_grad for module in modules for p in module.parameters())


def recompute_in_backward(layer: nn.Module, on: bool = True) -> None:
    """Make ``layer`` keep only its inputs for backward and run its forward again there (``on``
    False: as before). Its class's ``forward`` runs inside non-reentrant ``torch.utils.checkpoint``
    (keyword arguments and autocast as given; the RNG state restored, so that dropout, LoRA's
    included, draws the same mask again), only in training with gradients on. Hooks on the
    layer itself run once, outside the checkpoint, as transformers' own checkpointing does."""
    if on:
        layer.forward = MethodType(_recomputed_forward, layer)
    else:
        layer.__dict__.pop("forward", None)


def _recomputed_forward(layer: nn.Module, *args, **kwargs):
    forward = partial(type(layer).forward, layer)
    if layer.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    return forward(*args, **kwargs)


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


# ---- will a training step fit? -------------------------------------------------------------

# Peak memory of one LoRA training step of the full-size SAM3, batch 1, 4 text queries per image
# (bench/bench_memory.py; BENCHMARKS.md, "Peak memory of a LoRA training step"), in GB:
# (px, preset, base dtype, checkpointing) -> (peak of the step, the loaded model). Measured on
# a CPU as peak RSS: a proxy for GPU memory until a GPU run replaces it. A test keeps it equal
# to the newest table in BENCHMARKS.md.
STEP_MEMORY_SOURCE = "from CPU peak RSS, a proxy: BENCHMARKS.md"
STEP_MEMORY_GB: dict[tuple[int, str, str, bool], tuple[float, float]] = {   # 336, 672 px: 2026-11-30
    (336, "minimal", "float32", False): (6.16, 3.54),
    (336, "minimal", "float32", True): (5.59, 3.54),
    (336, "minimal", "bfloat16", False): (3.43, 1.99),
    (336, "minimal", "bfloat16", True): (2.78, 1.99),
    (336, "balanced", "float32", False): (8.59, 3.57),
    (336, "balanced", "float32", True): (5.80, 3.57),
    (336, "balanced", "bfloat16", False): (4.74, 2.03),
    (336, "balanced", "bfloat16", True): (2.93, 2.03),
    (336, "full", "float32", False): (9.63, 3.63),
    (336, "full", "float32", True): (6.74, 3.63),
    (336, "full", "bfloat16", False): (4.95, 2.08),
    (336, "full", "bfloat16", True): (3.71, 2.08),
    (672, "minimal", "float32", False): (13.81, 3.54),
    (672, "minimal", "float32", True): (12.88, 3.54),
    (672, "minimal", "bfloat16", False): (7.40, 1.99),
    (672, "minimal", "bfloat16", True): (4.48, 1.99),
    (672, "balanced", "float32", True): (10.93, 3.58),
    (672, "balanced", "bfloat16", False): (12.07, 2.03),
    (672, "balanced", "bfloat16", True): (5.14, 2.03),
    (672, "full", "float32", True): (14.32, 3.64),
    (672, "full", "bfloat16", False): (12.48, 2.08),
    (672, "full", "bfloat16", True): (7.10, 2.08),
    (336, "heads", "bfloat16", True): (3.88, 2.03),   # measured 2026-12-07
    # 1008 px measured 2026-12-08 (another CPU, freed memory no longer counted: lower than the rows above)
    (1008, "minimal", "bfloat16", False): (9.63, 2.03),
    (1008, "minimal", "bfloat16", True): (4.62, 2.03),
    (1008, "balanced", "bfloat16", False): (18.30, 2.07),
    (1008, "balanced", "bfloat16", True): (4.81, 2.07),
    (1008, "full", "bfloat16", True): (5.02, 2.13),
    (1008, "heads", "bfloat16", False): (10.59, 2.04),
    (1008, "heads", "bfloat16", True): (4.31, 2.04),
}
PRESETS = ("minimal", "balanced", "full", "heads")


def step_memory_gb(image_size: int, preset: str | None, dtype: str, checkpointing: bool,
                   batch_size: int) -> float | None:
    """Estimated peak memory (GB, model included) of a LoRA training step of the full-size
    SAM3: the measured configuration nearest above ``image_size`` (else the largest), its
    memory above the loaded model scaled by the pixel count and the batch size. ``preset``
    None (a LoRA section of its own) takes the largest of the presets. None if unmeasured."""
    presets = [preset] if preset else PRESETS
    found = [(px, peak, loaded) for (px, name, kind, ckpt), (peak, loaded) in STEP_MEMORY_GB.items()
             if name in presets and kind == dtype and ckpt == checkpointing]
    if not found:
        return None
    above = [px for px, _, _ in found if px >= image_size]
    nearest = min(above) if above else max(px for px, _, _ in found)
    return max(loaded + (peak - loaded) * (image_size / px) ** 2 * batch_size
               for px, peak, loaded in found if px == nearest)


def memory_advice(free_gb: float, held_gb: float, image_size: int, preset: str | None, dtype: str,
                  checkpointing: bool, batch_size: int) -> str | None:
    """What to change when a LoRA step of the full-size SAM3 is estimated to need more than the
    device can give it: ``free_gb`` plus ``held_gb`` (the model already on it). None if it
    fits or the configuration was never measured. One line naming the keys: the first single
    change that fits, else all of them."""
    need = step_memory_gb(image_size, preset, dtype, checkpointing, batch_size)
    budget = free_gb + held_gb
    if need is None or need <= budget:
        return None
    changes = [("training.activation_checkpointing=1", (image_size, preset, dtype, True, batch_size), not checkpointing),
               ("model.dtype=bfloat16", (image_size, preset, "bfloat16", checkpointing, batch_size), dtype == "float32"),
               ("training.batch_size=1", (image_size, preset, dtype, checkpointing, 1), batch_size > 1),
               ("model.image_size=672", (672, preset, dtype, checkpointing, batch_size), image_size > 672),
               ("the minimal preset's lora section", (image_size, "minimal", dtype, checkpointing, batch_size),
                preset != "minimal")]
    applicable = [(key, args) for key, args, applies in changes if applies]
    fits = [key for key, args in applicable if (step_memory_gb(*args) or need) <= budget]
    what = (f"set {fits[0]}" if fits else "change " + ", ".join(key for key, _ in applicable) if applicable
            else "lower model.image_size")
    return (f"a training step is estimated to need {need:.1f} GB ({STEP_MEMORY_SOURCE}), more than the "
            f"{budget:.1f} GB this device has for it: {what}, or expect to run out of memory")


def lora_preset(lora: LoRAConfig) -> str | None:
    """The preset whose ``lora`` section ``lora`` is, or None."""
    return next((name for name in PRESETS if load_config(name).lora == lora), None)


def is_full_size(model_config) -> bool:
    """Whether ``model_config`` is the full-size SAM3 architecture (the one measured)."""
    return architecture(model_config) == architecture(load_sam3_config("sam3"))
