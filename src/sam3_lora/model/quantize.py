"""A quantized frozen base (QLoRA): ``model.quantize: nf4 | fp4 | int8`` through bitsandbytes.

As the model loads (``load_sam3(..., quantize=...)``), every ``nn.Linear`` of SAM3 becomes
bitsandbytes' ``Linear4bit`` (nf4 or fp4: 4-bit weights in blocks of 64, each block's scale
itself quantized, "double quantization") or ``Linear8bitLt`` (int8: one scale per output row,
LLM.int8's outlier columns kept in 16 bits). The rest (norms, embeddings, convolutions, biases)
stays in ``model.dtype``, which is also the compute dtype: a 4-bit layer dequantizes its
block of weights to it for each matmul. LoRA then goes on top (PEFT has a LoRA layer for each
bitsandbytes layer), so the trained weights and the saved adapter are float32 as ever; only the
frozen base shrinks. Linear layers hold 92% of SAM3's weights (the rest is mostly the text
encoder's token embedding): 3.13 GiB in float32 become 0.62 GiB with nf4 (0.50 GiB with a
bfloat16 ``model.dtype``), 0.97 GiB with int8 (``sam3-lora info`` prints it for a config).

An adapter is a set of LoRA matrices keyed by layer name, the same with and without
quantization, so one trained on a quantized base loads onto a float32 or bfloat16 one and the
reverse (BENCHMARKS.md, "Small GPUs", measures what that costs). A merged export of a
quantized run dequantizes the base first (``dequantize_linears``): the LoRA product is added
to the weights the adapter was trained against, in float32, never re-quantized.

bitsandbytes is an optional dependency (``pip install 'sam3-lora[quantize]'``), imported only
here and only when a method is chosen.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings

import torch
from torch import nn

from sam3_lora.errors import ModelLoadError

METHODS = ("none", "nf4", "fp4", "int8")
FOUR_BIT = ("nf4", "fp4")
INSTALL_HINT = "pip install 'sam3-lora[quantize]' (bitsandbytes 0.50)"
# bitsandbytes' 4-bit layout: 64 weights per block, each block's absmax scale quantized to
# 8 bits in groups of 256 (one float32 scale per group), plus a 256-entry float32 code book.
BLOCK, GROUP, CODE_BOOK = 64, 256, 256
# LLM.int8's outlier threshold (bitsandbytes' and transformers' default).
INT8_THRESHOLD = 6.0


def bitsandbytes(method: str):
    """The ``bitsandbytes`` module, or a one-line error saying how to install it."""
    try:
        with warnings.catch_warnings():   # "install `kernels` for faster CPU kernels": advice, not a fault
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
    except ImportError:
        raise ModelLoadError(f"model.quantize={method}: bitsandbytes is not installed; {INSTALL_HINT}, "
                             f"or set model.quantize=none") from None
    return bnb


def quantize_linears(model: nn.Module, method: str, compute_dtype: torch.dtype,
                     device: torch.device | str = "cpu") -> int:
    """Replace every ``nn.Linear`` of ``model`` by its bitsandbytes version (``method``: nf4,
    fp4 or int8), quantized on ``device`` (where it will run: the float weights never go
    there); returns how many layers. Marks the model as PEFT expects of a quantized base."""
    bnb = bitsandbytes(method)
    check_runs(method, compute_dtype, device)
    layers = [(parent, name, child) for parent in model.modules()
              for name, child in parent.named_children() if type(child) is nn.Linear]
    for parent, name, linear in layers:
        setattr(parent, name, _quantized(bnb, linear, method, compute_dtype, device))
    # PEFT wraps bitsandbytes layers with its own LoRA layers only on models marked so.
    model.is_loaded_in_4bit = method in FOUR_BIT
    model.is_loaded_in_8bit = method == "int8"
    model.sam3_lora_quantize = method
    return len(layers)


def _quantized(bnb, linear: nn.Linear, method: str, compute_dtype: torch.dtype, device) -> nn.Module:
    """One Linear as a frozen bitsandbytes layer on ``device``."""
    weight = linear.weight.data.to(compute_dtype)
    bias = linear.bias is not None
    if method == "int8":
        layer = _int8_linear(bnb)(linear.in_features, linear.out_features, bias=bias,
                                  has_fp16_weights=False, threshold=INT8_THRESHOLD)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                  compute_dtype=compute_dtype, quant_type=method)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=method, blocksize=BLOCK)
        # On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a layer for its CPU kernel at the
        # first forward without gradients (an evaluation), for good: the scales become bfloat16
        # (outputs move by ~1e-2, so a merged export no longer matches), the next training
        # step fails (an in-place bias add on a tensor autograd tracks), and a layer whose input
        # is not a multiple of the block (the tiny presets' 32-wide ones) fails at once. The
        # plain layout everywhere: the same kernel as on every other CPU and in training.
        layer.support_avx512bf16_for_cpu = False
    if bias:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    with _quiet():
        return layer.to(device)   # moving a bitsandbytes layer is what quantizes it


@functools.cache
def _int8_linear(bnb) -> type:
    """bitsandbytes' ``Linear8bitLt`` for inputs of any rank: its matmul takes 2-D and 3-D
    inputs only, and SAM3's ViT attention projects (batch, height, width, channels)."""

    class Linear8bitLt(bnb.nn.Linear8bitLt):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)

    # Each int8 matmul logs that it casts its float32 or bfloat16 input to float16 (its
    # int8 kernels' input): once per layer and call, saying nothing the user can act on.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return Linear8bitLt


@contextlib.contextmanager
def _quiet():
    """bitsandbytes' advice on CPU ("faster with the kernels package") once per layer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="bitsandbytes")
        yield


def check_runs(method: str, compute_dtype: torch.dtype, device: torch.device | str) -> None:
    """Quantize and run one small layer on ``device``: a one-line error where bitsandbytes
    cannot (an unsupported GPU or backend), before a large model is half converted."""
    bnb = bitsandbytes(method)
    probe = nn.Linear(BLOCK, BLOCK).to(compute_dtype)
    try:
        layer = _quantized(bnb, probe, method, compute_dtype, device)
        with torch.no_grad():
            layer(torch.ones(1, BLOCK, dtype=compute_dtype, device=device))
    except Exception as exc:  # noqa: BLE001 - bitsandbytes raises many kinds on unsupported devices
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelLoadError(f"model.quantize={method}: bitsandbytes {bnb.__version__} cannot run on "
                             f"{device} ({first[:160]}); set model.quantize=none") from None


def quantization(model: nn.Module) -> str:
    """The ``model.quantize`` method ``model``'s base was loaded with (``none`` if plain)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "sam3_lora_quantize", "none")


def dequantize_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Turn every bitsandbytes layer of ``model`` back into an ``nn.Linear`` in ``dtype``
    holding the weights it computed with (what a merged export adds the LoRA product to);
    returns how many layers. A plain model is left as it is."""
    if quantization(model) == "none":
        return 0
    from peft.utils.integrations import dequantize_bnb_weight

    bnb = bitsandbytes(quantization(model))
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    layers = [(parent, name, child) for parent in model.modules()
              for name, child in parent.named_children() if isinstance(child, kinds)]
    for parent, name, layer in layers:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=layer.weight.device, dtype=dtype)
        weight = dequantize_bnb_weight(layer.weight, getattr(layer, "state", None))
        plain.weight.data.copy_(weight.to(dtype))
        if layer.bias is not None:
            plain.bias.data.copy_(layer.bias.data.to(dtype))
        setattr(parent, name, plain.requires_grad_(False))
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    model.sam3_lora_quantize = "none"
    return len(layers)


# ---- sizes ---------------------------------------------------------------------------------

def stored_bytes(model: nn.Module) -> int:
    """Bytes ``model``'s weights and buffers take as stored: quantized layers counted with
    their scales and code books."""
    total = 0
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            total += tensor.numel() * tensor.element_size()
            state = getattr(tensor, "quant_state", None)
            if state is not None:   # 4-bit: block scales, nested scales, code books (not the
                # "quant_state.*" entry: its settings as JSON text, for files)
                total += sum(t.numel() * t.element_size() for key, t in state.as_dict(packed=True).items()
                             if torch.is_tensor(t) and not key.startswith("quant_state."))
            if getattr(tensor, "SCB", None) is not None:   # int8: one float32 scale per row
                total += tensor.SCB.numel() * tensor.SCB.element_size()
    return total


def linear_bytes(rows: int, columns: int, method: str, dtype_bytes: int) -> int:
    """Bytes of a ``rows`` x ``columns`` weight as ``method`` stores it (``none``: plain)."""
    count = rows * columns
    if method == "none":
        return count * dtype_bytes
    if method == "int8":
        return count + 4 * rows
    blocks = math.ceil(count / BLOCK)
    groups = math.ceil(blocks / GROUP)
    # packed 4-bit weights, 8-bit block scales, float32 group scales, the two code books
    return math.ceil(count / 2) + blocks + 4 * groups + 4 * (16 + CODE_BOOK)


def estimated_bytes(model: nn.Module, method: str, dtype_bytes: int) -> int:
    """Bytes of ``model``'s weights and buffers once loaded with ``model.quantize=method`` in
    a ``dtype_bytes`` dtype, from shapes alone (``model`` may be on the meta device)."""
    total = 0
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            size = tensor.element_size() if not tensor.is_floating_point() else dtype_bytes
            if type(module) is nn.Linear and name == "weight":
                total += linear_bytes(*tensor.shape, method, dtype_bytes)
            else:
                total += tensor.numel() * size
    return total


def size_line(model_config, method: str) -> str:
    """``sam3-lora info``'s line: the base's weights in memory for the architecture
    ``model_config`` (a ``Sam3Config``), plain and, for ``method``, quantized, in float32 and
    in a 16-bit ``model.dtype`` (from shapes: nothing is loaded)."""
    from transformers import Sam3Model

    with torch.device("meta"):
        model = Sam3Model(model_config)
    mib = [estimated_bytes(model, kind, size) / 2**20 for kind in ("none", method) for size in (4, 2)]
    line = f"weights: {mib[0]:,.1f} MiB in float32, {mib[1]:,.1f} MiB in bfloat16/float16"
    if method != "none":
        line += f"; with model.quantize={method}: {mib[2]:,.1f} MiB / {mib[3]:,.1f} MiB"
    return line
