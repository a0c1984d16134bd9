"""Numeric precision: the dtype SAM3's weights are held in, and the autocast its math runs under.

Two config keys decide it, ``model.dtype`` (the frozen base's weights) and
``training.mixed_precision`` (autocast of training's forward and backward), both ``auto`` by
default. ``resolve_precision`` turns them and the device into one ``Precision``: the single
place their rules live. The trainer, ``lora.weights.load_finetuned`` (validation, prediction,
the app, the demo) and merged exports all go through it.

``auto`` follows the device: bfloat16 on CUDA devices with native bf16 (Ampere and newer),
float16 with loss scaling on older CUDA devices, float32 without autocast on the CPU (where
``bfloat16`` stays available on request). A half-precision base always computes under
autocast of its own dtype (``autocast_like``: its inputs stay float32, LoRA's float32 weights
meet the base inside autocast, PEFT casts at the LoRA layer's boundary), so
``mixed_precision: auto`` follows an explicit half ``model.dtype``. LoRA weights, their
gradients and the optimiser state are float32 whatever the base's dtype (PEFT's
``autocast_adapter_dtype``). Full training (``training.method: full``) keeps float32 master
weights: its ``auto`` base is float32, and a half one is refused (AdamW on bfloat16 weights
loses every update smaller than the weight's last bit). TF32 matmuls are switched on for CUDA
runs whose math is float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sam3_lora.errors import ConfigError
from sam3_lora.model.adapter_parameters import is_adapter_parameter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# training.mixed_precision value <-> the autocast dtype it stands for
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
HALF = {dtype: name for name, dtype in AUTOCAST.items()}


@dataclass(frozen=True)
class Precision:
    """What a run computes in: resolved from the config keys for one device."""

    device: str
    """``cuda`` or ``cpu``."""
    dtype: torch.dtype
    """Dtype of the base model's weights."""
    autocast: str
    """Autocast of the forward (and backward): ``no``, ``bf16`` or ``fp16`` (Accelerate's names)."""
    full_training: bool = False
    """Every weight trains (float32 master weights), not LoRA."""

    @property
    def tf32(self) -> bool:
        """Whether float32 matmuls use TF32 (CUDA runs whose math is float32)."""
        return self.device == "cuda" and self.autocast == "no"

    def record(self) -> dict:
        """The choice as plain JSON (written to a run's metrics.jsonl and metrics.json)."""
        return {"device": self.device, "base_dtype": dtype_name(self.dtype), "autocast": self.autocast,
                "trained_dtype": "float32", "tf32": self.tf32}

    def describe(self) -> str:
        """One line, e.g. 'cuda: base weights bfloat16, autocast bf16, LoRA float32'."""
        math = f"autocast {self.autocast}" if self.autocast != "no" else (
            "float32 math (TF32 matmuls)" if self.tf32 else "float32 math")
        if self.full_training:
            return f"{self.device}: every weight trained in float32, {math}"
        return f"{self.device}: base weights {dtype_name(self.dtype)}, {math}, LoRA float32"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16' (the names ``model.dtype`` takes)."""
    return str(dtype).removeprefix("torch.")


def default_device() -> torch.device:
    """Where models run unless told otherwise: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_half(device: torch.device) -> torch.dtype:
    """The half precision a CUDA device runs natively: bfloat16 from Ampere on, else float16.

    (Emulated bf16 on older GPUs runs far below their fp16 rate, so it does not count.)
    """
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:   # torch before 2.4 has no such argument and counts native support only
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def resolve_precision(dtype: str = "auto", mixed_precision: str | None = "auto",
                      device: torch.device | str | None = None, *, full_training: bool = False) -> Precision:
    """``model.dtype`` and ``training.mixed_precision`` on ``device`` -> the concrete choice.

    ``mixed_precision=None`` resolves for inference: the math follows the weights (autocast
    of a half-precision base, float32 otherwise). ``full_training`` keeps float32 master
    weights (``training.method: full``). Raises ConfigError naming both keys when they
    contradict each other or the device.
    """
    device = torch.device(device) if device is not None else default_device()
    on_cuda = device.type == "cuda"
    if dtype == "float16" and not on_cuda:
        raise ConfigError("model.dtype=float16 needs a CUDA GPU; use bfloat16 or float32 (or auto) on CPU")
    if mixed_precision == "fp16" and not on_cuda:
        raise ConfigError("training.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if full_training and dtype in ("bfloat16", "float16"):
        raise ConfigError(f"model.dtype={dtype} with training.method=full: AdamW on {dtype} weights loses "
                          f"small updates; use model.dtype=float32 (or auto) with training.mixed_precision=bf16")
    if mixed_precision is None:   # inference: the math follows the weights
        weights = DTYPES[dtype] if dtype != "auto" else cuda_half(device) if on_cuda else torch.float32
        return Precision(device.type, weights, HALF.get(weights, "no"))
    if dtype == "auto":
        if full_training or not on_cuda:
            weights = torch.float32
        elif mixed_precision == "auto":
            weights = cuda_half(device)
        else:   # an explicit autocast: the base follows it (float32 under `no`)
            weights = AUTOCAST.get(mixed_precision, torch.float32)
    else:
        weights = DTYPES[dtype]
    if mixed_precision == "auto":
        if weights in HALF:
            autocast = HALF[weights]
        else:
            autocast = HALF[cuda_half(device)] if on_cuda else "no"
    else:
        autocast = mixed_precision
    if weights in HALF and autocast != HALF[weights]:
        raise ConfigError(f"model.dtype={dtype_name(weights)} with training.mixed_precision={autocast}: a "
                          f"{dtype_name(weights)} base computes under {HALF[weights]} autocast; set "
                          f"training.mixed_precision=auto (or {HALF[weights]}), or model.dtype=float32")
    return Precision(device.type, weights, autocast, full_training)


def enable_tf32(precision: Precision) -> None:
    """TF32 matmuls and convolutions for float32 math on CUDA (Ampere or newer runs them at
    several times the float32 rate, with float32's range). Nothing changes otherwise."""
    if precision.tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s base weights (the adapter's own float32 weights left out)."""
    for name, parameter in model.named_parameters():
        if not is_adapter_parameter(name) and parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


@contextlib.contextmanager
def autocast_like(model: nn.Module) -> Iterator[None]:
    """Inside, a half-precision ``model`` runs under autocast of its own dtype, so that float32
    inputs (pixels, boxes) and float32 LoRA weights meet its half weights. A float32 model, or
    one already inside an autocast (the trainer's), is left as it is."""
    dtype = weights_dtype(model)
    device_type = next(model.parameters()).device.type
    if dtype not in HALF or torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, dtype=dtype):
        yield
