"""Training throughput per LoRA preset x batch size x activation checkpointing.

One step = B synthetic images at the model's size with K text queries each (each image
encoded once for its K queries, as the trainer does) and synthetic box and mask targets,
SAM3's loss with its auxiliary decoder layers, backward, gradient clipping and AdamW (the
preset's learning rate and weight decay), under ``--precision`` autocast. Runs on the GPU
when CUDA is available, else on the CPU. Every configuration runs in its own process, so its
peak memory is its own and running out of memory gives an "OOM" row instead of a crash.

Reported per configuration: images/s and s/step (mean of the timed steps after one warm-up
step), peak memory (CUDA: the most torch allocated during the timed steps; CPU: the process's
peak RSS from the warm-up step on, model included: the peak of building the model, which
draws float32 weights before a ``--dtype bfloat16`` cast, is left out), the memory held once
the model is loaded, the FLOPs of one step counted by FlopCounterMode (forward and
backward as run, checkpoint recomputation included), the achieved TFLOP/s, and MFU against
the GPU's dense bf16 peak where ``sam3_lora.recipes.train.PEAK_TFLOPS`` knows it.

``--cache-features on`` times a step as ``data.cache_features`` makes it after the first epoch:
the images' vision features read from a cache filled before the warm-up step, the vision encoder
not run (a preset without LoRA in it: ``heads``); ``both`` puts the two side by side.

    python bench/bench_steps.py [--model sam3-tiny] [--image-size N]
        [--presets minimal balanced full] [--batch-sizes 1 2 4] [--checkpointing off|on|both]
        [--precision no|bf16] [--dtype float32|bfloat16] [--quantize none|nf4|fp4|int8] [--queries 4]
        [--cache-features off|on|both]
        [--steps 3] [--memory-limit-gb 20]
        [--write] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from bench_train import (  # bench/bench_train.py (scripts run from bench/)
    benchmark_device,
    oom_text,
    run_capped,
    synchronize,
    synthetic_targets,
    to_device,
)
from machine import append_entry, machine
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Training throughput per LoRA preset"


def gpu_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of this GPU from the trainer's table, or None (CPU, unknown GPU)."""
    from sam3_lora.training.resources import PEAK_TFLOPS

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def rss_gb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20   # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on the CPU the kernel's RSS high-water
    mark (after handing freed heap back to the system, so that memory let go of counts as gone)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS (Linux)


def held_memory_gb(device: torch.device) -> float:
    """Memory held now: tensors torch allocated on the GPU, or this process's RSS."""
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else rss_gb("VmRSS")


def peak_since_reset_gb(device: torch.device) -> float:
    """The peak since ``reset_peak_memory``: CUDA allocated bytes, or RSS."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else rss_gb("VmHWM")


def prime_optimizer(optimizer: torch.optim.Optimizer, trainable: list[torch.Tensor]) -> None:
    """Create AdamW's state (two float32 moments per trainable weight) with a step on zero
    gradients, so that a first measured step holds what every later step holds."""
    for parameter in trainable:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def build(model_source: str, image_size: int | None, dtype: str, device: torch.device, quantize: str = "none"):
    """The base model (``load_sam3``, as the trainer loads it) in ``dtype`` on ``device``, its
    Linear layers quantized as ``model.quantize=quantize`` does (computing in ``dtype``)."""
    from sam3_lora.model.loading import load_sam3
    from sam3_lora.model.precision import DTYPES

    loaded = load_sam3(model_source, image_size=image_size, dtype=DTYPES[dtype], quantize=quantize, device=device)
    loaded.model.to(device)
    return loaded


def run_one(model_source: str, image_size: int | None, preset: str, batch_size: int,
            checkpointing: bool, precision: str, queries: int, steps: int, dtype: str = "float32",
            quantize: str = "none", cached: bool = False) -> dict:
    """One configuration, measured in this process (see the module docstring)."""
    device = benchmark_device()
    runtime = rss_gb("VmRSS")   # Python, torch and the libraries, before any model: no GPU holds it
    loaded = build(model_source, image_size, dtype, device, quantize)
    row = measure_step(loaded, model_source, preset, batch_size, checkpointing, precision, queries, steps, cached)
    return {**row, "runtime_gb": runtime}


def measure_step(loaded, model_source: str, preset: str, batch_size: int, checkpointing: bool,
                 precision: str, queries: int, steps: int, cached: bool = False) -> dict:
    """LoRA of ``preset`` on the loaded base, one warm-up step (FLOPs counted) and ``steps``
    timed steps (``steps=0``: one step for its memory); the base is handed back without LoRA
    or checkpointing, ready for another call, also when a step runs out of memory.

    ``cached``: the images' vision features come from a ``FeatureCache`` (``data.cache_features``)
    filled before the first step, so every step reads them from it, as a training step after
    the first epoch does; the preset must leave the vision encoder without LoRA (``heads``)."""
    from sam3_lora.config import load_config
    from sam3_lora.lora.apply import apply_lora_to_model
    from sam3_lora.model.precision import dtype_name, resolve_precision, weights_dtype
    from sam3_lora.model.quantize import quantization
    from sam3_lora.training.resources import enable_activation_checkpointing

    device = next(loaded.model.parameters()).device
    dtype = dtype_name(weights_dtype(loaded.model))
    resolve_precision(dtype, precision, device)   # the trainer's rules: refuses a bf16 base without autocast
    config = load_config(preset)
    model = apply_lora_to_model(loaded.model, config.lora, verbose=False).to(device).train()
    enable_activation_checkpointing(model, every=1 if checkpointing else 0)
    try:
        row = _measure(model, loaded.processor, config, batch_size, precision, queries, steps, cached)
    finally:   # hand the bare base back (also after running out of memory): no LoRA, no checkpointing
        enable_activation_checkpointing(model, every=0)
        model.unload()
        del model
        reset_peak_memory(device)
    return {"model": model_source, "image_size": loaded.processor.image_size, "preset": preset,
            "batch_size": batch_size, "queries_per_image": queries, "checkpointing": checkpointing,
            "precision": precision, "dtype": dtype, "quantize": quantization(loaded.model),
            "cached_features": cached, **row}


def synthetic_batch(processor, batch_size: int, queries: int, device: torch.device):
    """One step's inputs, the same at every call: ``pixels`` (B, 3, S, S) of noise,
    ``image_index`` (B*K,) the image of each text query, ``text`` the K prompts of each image
    tokenised (input_ids, attention_mask), ``targets`` one synthetic box-and-mask target per query."""
    from sam3_lora.data.collate import mask_size_for

    size = processor.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    image_index = torch.arange(batch_size, device=device).repeat_interleave(queries)
    prompts = [f"concept {q}" for _ in range(batch_size) for q in range(queries)]
    text = {k: v.to(device) for k, v in processor.text(prompts).items()}
    targets = to_device(synthetic_targets(batch_size * queries, mask_size_for(size), generator), device)
    return pixels, image_index, text, targets


def _measure(model, processor, config, batch_size: int, precision: str, queries: int, steps: int,
             cached: bool = False) -> dict:
    """``measure_step``'s steps on the LoRA ``model``: speed, memory, FLOPs."""
    from sam3_lora.lora.apply import count_parameters
    from sam3_lora.loss.criterion import build_criterion
    from sam3_lora.model.forward import as_float32, forward_queries
    from sam3_lora.model.precision import AUTOCAST
    from sam3_lora.training.features import FeatureCache, trunk_problem
    from sam3_lora.training.optim import param_groups

    device = next(model.parameters()).device
    train = config.training
    optimizer = torch.optim.AdamW(param_groups(model, train.learning_rate, train.weight_decay,
                                               train.component_learning_rates), lr=train.learning_rate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    criterion = build_criterion(config.loss)

    pixels, image_index, text, targets = synthetic_batch(processor, batch_size, queries, device)
    if cached and (problem := trunk_problem(model, config.data)):
        raise SystemExit(f"--cache-features: {problem}")
    cache = FeatureCache(budget=2**62) if cached else None
    keys = [f"image {i}" for i in range(batch_size)]
    autocast = torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision != "no")

    def step() -> None:
        # As SAM3LoRATrainer: forward under autocast, the loss in fp32 on fp32 outputs.
        with autocast:
            vision = cache.encode(model, pixels, keys) if cache else None
            out = forward_queries(model, image_index, pixel_values=None if cache else pixels, vision=vision,
                                  aux_outputs=True, **text)
        criterion(as_float32(out), targets)["loss"].backward()
        if train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()

    # The model and LoRA, before any step, once the heap that building them freed (a float32
    # draw cast to bfloat16, the float weights a quantized layer replaced) is handed back.
    reset_peak_memory(device)
    held = held_memory_gb(device)
    if cache:   # the features already cached, as after the first epoch (the warm-up's FLOPs are a cached step's)
        with autocast:
            cache.encode(model, pixels, keys)
    if steps == 0:   # memory only: one step, timed, with AdamW's state already there as in every later step
        prime_optimizer(optimizer, trainable)
        reset_peak_memory(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        seconds, flops = time.perf_counter() - started, None
    else:
        reset_peak_memory(device)
        with FlopCounterMode(display=False) as counter:   # the warm-up step, untimed
            step()
        flops = counter.get_total_flops()
        synchronize(device)
        if device.type == "cuda":   # the timed steps' own peak (CPU: from the warm-up on)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - started)
        seconds = sum(times) / steps
    tflops = flops / seconds / 1e12 if flops else None
    peak = gpu_peak_tflops(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "trainable_params": count_parameters(model).trainable, "steps": steps,
        "s_per_step": seconds, "images_per_s": batch_size / seconds,
        "peak_memory_gb": peak_since_reset_gb(device), "after_load_gb": held,
        "memory": "peak CUDA allocated" if device.type == "cuda" else "peak RSS",
        "gflop_per_step": flops / 1e9 if flops else None, "tflops": tflops,
        "mfu": tflops / peak if peak and tflops else None,
    }


def child_command(model: str, image_size: int | None, preset: str, batch_size: int, checkpointing: bool,
                  precision: str, queries: int, steps: int, dtype: str = "float32",
                  quantize: str = "none", cached: bool = False) -> list[str]:
    """The command that measures one configuration in a fresh process (``--one``)."""
    command = [sys.executable, __file__, "--model", model, "--precision", precision, "--dtype", dtype,
               "--quantize", quantize, "--queries", str(queries), "--steps", str(steps),
               "--one", json.dumps([preset, batch_size, checkpointing])]
    command += ["--cache-features", "on"] if cached else []
    return command + (["--image-size", str(image_size)] if image_size else [])


def measure(model: str, image_size: int | None, presets: list[str], batch_sizes: list[int],
            checkpointing: str, precision: str, queries: int, steps: int,
            memory_limit_gb: float | None, dtype: str = "float32", quantize: str = "none",
            cache_features: str = "off") -> list[dict]:
    """Every configuration, each in a child process; rows in table order. ``checkpointing``
    and ``cache_features``: off, on or both (both: the two settings side by side)."""
    # An address-space cap would stop CUDA from starting: on a GPU, out of memory is the GPU's.
    limit_gb = None if torch.cuda.is_available() else memory_limit_gb
    modes = {"off": (False,), "on": (True,), "both": (False, True)}
    rows = []
    for ckpt in modes[checkpointing]:
        for preset in presets:
            for batch_size in batch_sizes:
                for cached in modes[cache_features]:
                    command = child_command(model, image_size, preset, batch_size, ckpt, precision, queries, steps,
                                            dtype, quantize, cached)
                    row = run_capped(command, limit_gb)
                    if row is None:
                        row = {"model": model, "preset": preset, "batch_size": batch_size,
                               "queries_per_image": queries, "checkpointing": ckpt, "cached_features": cached,
                               "precision": precision, "dtype": dtype, "quantize": quantize,
                               "oom": oom_text(limit_gb)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table, one line per configuration."""
    measured = next((r for r in rows if "oom" not in r), None)
    memory = measured["memory"] if measured else "peak memory"
    cache = any(r.get("cached_features") for r in rows)   # a column only where a row read cached features
    header = (f"| preset | batch | checkpointing |{' cached features |' if cache else ''} images/s | s/step | "
              f"{memory} | GFLOP/step | TFLOP/s | MFU |")
    lines = [header, f"|---|---:|---|{'---|' if cache else ''}---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['preset']} | {r['batch_size']} | {'on' if r['checkpointing'] else 'off'} |"
        head += f" {'on' if r.get('cached_features') else 'off'} |" if cache else ""
        if "oom" in r:
            lines.append(f"{head} OOM ({r['oom']}) | - | - | - | - | - |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"{head} {_num(r['images_per_s'])} | {_num(r['s_per_step'])} | "
                     f"{r['peak_memory_gb']:.2f} GB | {_num(r['gflop_per_step'])} | {_num(r['tflops'])} | {mfu} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    """Three significant digits, without an exponent: 0.000475, 6.04, 1.00, 312, 4,870; "-"
    for a figure not measured (a memory-only step counts no FLOPs)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 99.95 else f"{value:#.3g}"


def caption(rows: list[dict], args: argparse.Namespace) -> str:
    """One line saying what was measured."""
    measured = next((r for r in rows if "oom" not in r), None)
    where = measured["device"] if measured else benchmark_device().type
    size = f"{measured['image_size']} px" if measured else f"{args.image_size or 'default'} px"
    base = f", {args.dtype} base quantized {args.quantize}" if args.quantize != "none" else ""
    return (f"{args.model} at {size} on {where}{base}, precision {args.precision}, {args.queries} "
            f"text queries per image, mean of {args.steps} timed steps after a warm-up")


def record(markdown: str, rows: list[dict], args: argparse.Namespace, load: float) -> None:
    """Append this run as a dated entry at the end of HEADING's section of BENCHMARKS.md."""
    path = REPO / "BENCHMARKS.md"
    memory = ("the most memory torch allocated on the GPU during the timed steps"
              if torch.cuda.is_available() else "the process's peak RSS, model included")
    entry = (
        f"\n### {datetime.date.today().isoformat()}: {caption(rows, args)}\n\n"
        f"Machine: {machine()}; load average at start {load:.2f}.  \n"
        f"Command: `python bench/bench_steps.py {shlex.join(sys.argv[1:])}`  \n"
        "One step: a batch of synthetic images, each encoded once for its text queries, "
        "SAM3's loss with auxiliary layers on synthetic targets, backward, gradient clipping, "
        "AdamW; each configuration in its own process. Peak memory: "
        f"{memory}. TFLOP/s: the FLOPs of one step (FlopCounterMode, forward and backward "
        "as run) over its time; MFU against the GPU's dense bf16 peak.\n\n"
        f"{markdown}\n"
    )
    append_entry(HEADING, entry, path)


def main() -> None:
    from sam3_lora.model.quantize import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3-tiny", help="preset (sam3, sam3-tiny), folder or hub id")
    parser.add_argument("--image-size", type=int, default=None, help="input size (multiple of 14)")
    parser.add_argument("--presets", nargs="+", default=["minimal", "balanced", "full"],
                        help="LoRA presets (or config files): their lora, loss and optimiser settings")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="ViT activation checkpointing (every block) in the measured configurations")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="autocast precision")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype of the base weights (bfloat16 needs --precision bf16)")
    parser.add_argument("--quantize", choices=METHODS, default="none",
                        help="model.quantize: the base's Linear layers through bitsandbytes, computing in --dtype")
    parser.add_argument("--cache-features", choices=["off", "on", "both"], default="off",
                        help="measured steps read the vision features from a cache the warm-up filled "
                             "(data.cache_features, as after the first epoch); needs a preset without ViT LoRA")
    parser.add_argument("--queries", type=int, default=4, help="text queries per image")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps after one warm-up step; 0: one step for its memory only (no FLOPs)")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="address-space cap per configuration, CPU only (this machine has 24 GB)")
    parser.add_argument("--write", action="store_true", help=f"append the table under {HEADING!r} in BENCHMARKS.md")
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON to OUT")
    parser.add_argument("--one", help=argparse.SUPPRESS)   # internal: run one configuration
    args = parser.parse_args()
    if args.one:
        preset, batch_size, checkpointing = json.loads(args.one)
        print(json.dumps(run_one(args.model, args.image_size, preset, batch_size, checkpointing,
                                 args.precision, args.queries, args.steps, args.dtype, args.quantize,
                                 args.cache_features == "on")))
        return
    load = os.getloadavg()[0]
    rows = measure(args.model, args.image_size, args.presets, args.batch_sizes, args.checkpointing,
                   args.precision, args.queries, args.steps, args.memory_limit_gb, args.dtype, args.quantize,
                   args.cache_features)
    markdown = table(rows)
    print(caption(rows, args))
    print(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.write:
        record(markdown, rows, args, load)


if __name__ == "__main__":
    main()
