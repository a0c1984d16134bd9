"""The one prepared GPU check: what a CUDA run must measure, in one process, in under 8 minutes
on one H100/H200-class GPU.

    python bench/gpu_check.py [--write] [--json OUT]          (= python bench/run.py --scale gpu --only gpu_check)
    python bench/gpu_check.py --dry-run                       the plan, without running anything
    python bench/gpu_check.py --device cpu --model sam3-tiny --image-size 112 --memory-sizes 112 \
        --presets minimal --steps 1 --held-out-images 8 --tracker-width 128 --video-frames 4
                                                              all of it, tiny, on a CPU (the test)

Everything runs on the full-size SAM3 architecture (random weights) at 1008 px unless told
otherwise, in this order (each section timed; a section that would start after
``--budget-s`` is skipped and said so):

1. predict latency: ``SAM3LoRAInference.predict`` on one 640x480 image with 1 and 16 text
   prompts, float32 weights (TF32 matmuls) then bfloat16 weights; median of ``--repeats``
   after a warm-up, post-processing included.
2. bf16 vs fp32 agreement: the outputs of the same weights in each (16 prompts), and the
   bundled base's held-out mAP in each (``bench_precision.py``).
3. training throughput, bf16 base with bf16 autocast: images/s, peak CUDA memory
   (``max_memory_allocated``) and MFU of LoRA training steps at 1008 px, each preset at batch
   1 with checkpointing off and on, and batch 4 with checkpointing off and on (``bench_steps``);
   ``heads`` also at batch 1 with its vision features cached, checkpointing off and on (a step
   after the first epoch with ``data.cache_features``: issue 24's "3x faster" question).
4. memory: one training step per preset x ``--memory-sizes`` x checkpointing off/on x
   float32/bfloat16 base, then on a base loaded with ``model.quantize`` = each of
   ``--quantize`` (nf4: bitsandbytes, computing in bfloat16), batch 1 (``bench_memory``'s
   table, measured on the GPU, the same rows as its CPU proxy).

5. video: ``sam3-lora track``'s engine (``SAM3LoRAInference.track``) following one clicked
   object through a synthetic 854x480 clip of ``--video-frames`` frames with the tracker
   (``model.task: interactive``, its memory new and random: the speed and memory of tracking
   do not depend on what the weights know), in ``model.dtype`` auto (bfloat16 on a GPU):
   frames/s after the first frame and peak memory (CUDA ``max_memory_allocated`` since the
   section began; on a CPU, the process's peak RSS).

``--write`` appends the results to BENCHMARKS.md (the memory table under bench_memory's
section, the rest under this script's).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_memory import HEADING as MEMORY_HEADING  # bench/*.py (scripts run from bench/)
from bench_memory import table as memory_table
from bench_precision import agreement_line, held_out_agreement, held_out_table, output_agreement
from bench_steps import build, measure_step
from bench_steps import table as throughput_table
from machine import append_entry, machine

from sam3_lora.errors import ModelLoadError
from sam3_lora.model.quantize import METHODS, quantization

REPO = Path(__file__).resolve().parents[1]
HEADING = "## GPU check"
PROMPT_COUNTS = (1, 16)
TRAINING = ((1, False), (1, True), (4, False), (4, True))   # (batch size, checkpointing)
CACHED_TRAINING = ((1, False), (1, True))   # heads again, its vision features cached
MEMORY_COLUMNS = (("float32", "no"), ("bfloat16", "bf16"))   # base dtype and its autocast


class Plan:
    """The sections in order, with a time budget: each runs only if started in time."""

    def __init__(self, budget_s: float):
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []

    def run(self, name: str, fn, *args):
        if time.perf_counter() - self.started > self.budget_s:
            self.skipped.append(name)
            print(f"== {name}: skipped (past the {self.budget_s:.0f} s budget)", flush=True)
            return None
        begun = time.perf_counter()
        print(f"== {name} ...", flush=True)
        result = fn(*args)
        self.timings[name] = time.perf_counter() - begun
        print(f"== {name}: {self.timings[name]:.0f} s", flush=True)
        return result


def engine_for(args: argparse.Namespace, device: torch.device):
    """A float32 SAM3LoRAInference of the base model (no adapter) on ``device``."""
    from sam3_lora.config import load_config
    from sam3_lora.serve.inference import SAM3LoRAInference

    size = [f"model.image_size={args.image_size}"] if args.image_size else []
    config = load_config(None, [f"model.source={args.model}", "model.dtype=float32", *size])
    engine = SAM3LoRAInference(config=config, no_lora=True, detection_threshold=0.5)
    assert engine.device.type == device.type, (engine.device, device)
    return engine


def video_tracking(args: argparse.Namespace, device: torch.device, folder: Path) -> dict:
    """Section 5: one object clicked on frame 0 of a synthetic clip written to ``folder``, followed
    by ``track``'s engine to the last frame (see the module docstring)."""
    from sam3_lora.config import load_config
    from sam3_lora.serve.inference import SAM3LoRAInference
    from sam3_lora.training.resources import peak_memory_mb

    centres = write_clip(folder, args.video_frames)
    overrides = [f"model.source={args.model}", "model.task=interactive"]
    overrides += [f"model.image_size={args.image_size}"] if args.image_size else []
    overrides += [f"model.tracker_width={args.tracker_width}"] if args.tracker_width else []
    engine = SAM3LoRAInference(config=load_config(None, overrides), no_lora=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    arrived = [time.perf_counter() for _ in engine.track(folder, points=[centres[0]], labels=[1])]
    return {"model": args.model, "image_size": engine.processor.image_size, "frames": len(arrived),
            "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
            "frames_per_s": (len(arrived) - 1) / (arrived[-1] - arrived[0]),
            "peak_memory_mb": peak_memory_mb(device)}


def write_clip(folder: Path, frames: int, size: tuple[int, int] = (854, 480)) -> list[tuple[int, int]]:
    """``frames`` JPEGs of a bright square crossing a noisy background; its centres (x, y)."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    centres = []
    for index in range(frames):
        pixels = (rng.random((height, width, 3)) * 80).astype("uint8")
        x, y = int(100 + (width - 200) * index / max(frames - 1, 1)), height // 2
        pixels[y - 40:y + 40, x - 40:x + 40] = (230, 60, 40)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
        centres.append((x, y))
    return centres


def latency(engine, image, repeats: int, label: str) -> list[dict]:
    """Median seconds of ``engine.predict`` on ``image`` per prompt count."""
    rows = []
    for count in PROMPT_COUNTS:
        prompts = [f"concept number {i}" for i in range(count)]
        engine.predict(image, prompts)   # warm-up, fills the text cache
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.predict(image, prompts)   # returns numpy arrays: the GPU work is done
            times.append(time.perf_counter() - started)
        rows.append({"weights": label, "prompts": count, "median_s": statistics.median(times)})
    return rows


def throughput(loaded, args: argparse.Namespace) -> list[dict]:
    """Training steps on the bfloat16 base: every preset x TRAINING; ``heads`` also with its
    vision features cached (``data.cache_features``: a step after the first epoch) at batch 1."""
    rows = []
    for preset in args.presets:
        for batch_size, checkpointing in TRAINING:
            rows.append(safe_step(loaded, args, preset, batch_size, checkpointing, "bf16", args.steps))
        if preset == "heads":
            rows += [safe_step(loaded, args, preset, batch_size, checkpointing, "bf16", args.steps, cached=True)
                     for batch_size, checkpointing in CACHED_TRAINING]
    return rows


def memory_grid(loaded, args: argparse.Namespace, dtype: str, precision: str) -> list[dict]:
    """One memory-only step per preset x checkpointing on the loaded base (its dtype: ``dtype``)."""
    return [{**safe_step(loaded, args, preset, 1, checkpointing, precision, 0), "dtype": dtype}
            for checkpointing in (False, True) for preset in args.presets]


def quantized_base(model: str, size: int, device: torch.device, method: str, refused: list[str]):
    """The base at ``size`` px loaded with ``model.quantize=method``, computing in bfloat16; None,
    its one-line reason added to ``refused``, where bitsandbytes is missing or cannot run here
    (the rest of the check goes on)."""
    try:
        return build(model, size, "bfloat16", device, method)
    except ModelLoadError as exc:
        refused.append(str(exc))
        print(f"== {exc}", flush=True)
        return None


def safe_step(loaded, args, preset: str, batch_size: int, checkpointing: bool, precision: str, steps: int,
              cached: bool = False) -> dict:
    """``measure_step``, with running out of GPU memory as a row that says so."""
    try:
        row = measure_step(loaded, args.model, preset, batch_size, checkpointing, precision, args.queries, steps,
                           cached)
    except torch.OutOfMemoryError:
        row = {"model": args.model, "image_size": loaded.processor.image_size, "preset": preset,
               "batch_size": batch_size, "checkpointing": checkpointing, "precision": precision,
               "quantize": quantization(loaded.model), "cached_features": cached, "oom": "GPU out of memory"}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def release() -> None:
    """Hand memory no longer referenced back (the caller drops its references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def latency_table(rows: list[dict]) -> str:
    lines = ["| weights | " + " | ".join(f"{c} prompt{'s' * (c > 1)}" for c in PROMPT_COUNTS) + " |",
             "|---|" + "---:|" * len(PROMPT_COUNTS)]
    for label in dict.fromkeys(r["weights"] for r in rows):
        cells = [f"{r['median_s'] * 1000:.0f} ms" for r in rows if r["weights"] == label]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict, args: argparse.Namespace, plan: Plan) -> str:
    """The Markdown of everything measured (the memory table is returned separately)."""
    parts = [f"Sections and seconds: {', '.join(f'{k} {v:.0f}' for k, v in plan.timings.items())}"
             + (f"; skipped (time budget): {', '.join(plan.skipped)}" if plan.skipped else "") + "."]
    if "latency" in results:
        parts.append(f"`predict` latency, one 640x480 image, median of {args.repeats} after a warm-up:\n\n"
                     + latency_table(results["latency"]))
    if "outputs" in results:
        parts.append(f"bf16 vs fp32 outputs ({args.model}, 16 prompts): {agreement_line(results['outputs'])}.")
    if "held_out" in results:
        parts.append(f"bf16 vs fp32 on the bundled base's held-out split ({results['held_out']['float32']['images']} "
                     f"images):\n\n" + held_out_table(results["held_out"]))
    if results.get("refused"):
        parts.append("Not measured: " + "; ".join(dict.fromkeys(results["refused"])) + ".")
    if "video" in results:
        video = results["video"]
        parts.append(f"`track` (clicks, the tracker through memory), {video['frames']} frames of 854x480 at "
                     f"{video['image_size']} px, {video['dtype']}: {video['frames_per_s']:.1f} frames/s, peak memory "
                     f"{video['peak_memory_mb'] / 1024:.2f} GB.")
    if "training" in results:
        parts.append(f"LoRA training, bfloat16 base with bf16 autocast, {args.queries} text queries per image, "
                     f"mean of {args.steps} timed steps after a warm-up:\n\n" + throughput_table(results["training"]))
    return "\n\n".join(parts)


def dry_run(args: argparse.Namespace) -> None:
    size = args.image_size or "the model's own"
    print(f"gpu_check plan: {args.model} at {size} px on {args.device}, budget {args.budget_s:.0f} s")
    print(f"1. predict latency: {', '.join(map(str, PROMPT_COUNTS))} prompts, float32 then bfloat16 weights, "
          f"median of {args.repeats}")
    print(f"2. agreement: outputs of 16 prompts fp32 vs bf16; held-out mAP ({args.held_out_images} images)")
    cached = [("heads", b, c, True) for b, c in CACHED_TRAINING] if "heads" in args.presets else []
    steps = [(p, b, c, False) for p in args.presets for b, c in TRAINING] + cached
    print(f"3. training throughput (bf16): {len(steps)} configurations: "
          + ", ".join(f"{p} batch {b} checkpointing {'on' if c else 'off'}{', cached features' * cache}"
                      for p, b, c, cache in steps))
    bases = ["float32", "bfloat16", *(f"{method} (bfloat16)" for method in args.quantize)]
    print(f"4. memory: {len(args.presets) * 2 * len(bases) * len(args.memory_sizes)} one-step configurations: "
          f"presets {' '.join(args.presets)} x {' '.join(map(str, args.memory_sizes))} px x checkpointing off/on "
          f"x {'/'.join(bases)} base")
    print(f"5. video: track one clicked object through {args.video_frames} frames of 854x480, frames/s and peak memory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="sam3", help="preset (sam3, sam3-tiny), folder or hub id")
    parser.add_argument("--image-size", type=int, default=None, help="px of latency and training (default: the model's)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[336, 672, 1008])
    parser.add_argument("--presets", nargs="+", default=["minimal", "balanced", "full", "heads"])
    parser.add_argument("--quantize", nargs="*", choices=[m for m in METHODS if m != "none"], default=["nf4"],
                        help="memory: also a base loaded with each model.quantize, computing in bfloat16 "
                             "(the flag alone: none)")
    parser.add_argument("--queries", type=int, default=4, help="text queries per training image")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after a warm-up")
    parser.add_argument("--repeats", type=int, default=5, help="timed predictions per prompt count")
    parser.add_argument("--held-out-images", type=int, default=150)
    parser.add_argument("--video-frames", type=int, default=120, help="frames of the clip section 5 tracks through")
    parser.add_argument("--tracker-width", type=int, default=None,
                        help="section 5: model.tracker_width (a preset narrower than 128 cannot run on video)")
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a small trial")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    parser.add_argument("--json", metavar="OUT", help="write every result as JSON to OUT")
    args = parser.parse_args()
    if args.dry_run:
        dry_run(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: torch.cuda is not available on this machine (--dry-run shows the plan; "
              "--device cpu with a small --model runs it on the CPU)", file=sys.stderr)
        return 2
    if device.type == "cpu":   # the code path that picks the device must pick the CPU
        torch.cuda.is_available = lambda: False
    load = os.getloadavg()[0]
    plan, results = Plan(args.budget_s), {}
    image = __import__("PIL.Image", fromlist=["Image"]).fromarray(
        (np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8"))

    engine = plan.run("build", engine_for, args, device)
    results["latency"] = plan.run("latency float32", latency, engine, image, args.repeats, "float32 (TF32 on CUDA)") or []
    outputs = plan.run("agreement outputs", output_agreement, engine.model, engine.processor, 16)   # leaves bf16
    if outputs is None:
        engine.model.to(torch.bfloat16)
    else:
        results["outputs"] = outputs
    engine.clear_text_cache()
    results["latency"] += plan.run("latency bfloat16", latency, engine, image, args.repeats, "bfloat16") or []
    held_out = plan.run("agreement held-out", held_out_agreement, args.held_out_images, device)
    if held_out:
        results["held_out"] = held_out
    training = plan.run("training", throughput, engine, args)
    if training:
        results["training"] = training
    memory: list[dict] = []
    size = engine.processor.image_size
    for memory_size in sorted(args.memory_sizes, reverse=True):
        if memory_size == size and engine is not None:
            loaded = engine   # bfloat16 now
        else:   # one model on the device at a time: the peaks must count only the one measured
            loaded = engine = None
            release()
            loaded = plan.run(f"build {memory_size} px", build, args.model, memory_size, "float32", device)
        if loaded is None:
            continue
        for dtype, precision in MEMORY_COLUMNS[::-1] if loaded is engine else MEMORY_COLUMNS:
            loaded.model.to(getattr(torch, dtype))
            memory += plan.run(f"memory {memory_size} px {dtype}", memory_grid, loaded, args, dtype, precision) or []
        loaded = engine = None
        release()
        for method in args.quantize:   # a base of its own: quantizing replaces its Linear layers for good
            loaded = plan.run(f"build {memory_size} px {method}", quantized_base, args.model, memory_size,
                              device, method, results.setdefault("refused", []))
            if loaded is not None:
                memory += plan.run(f"memory {memory_size} px {method}", memory_grid, loaded, args, "bfloat16",
                                   "bf16") or []
            loaded = None
            release()
    with tempfile.TemporaryDirectory() as clip:
        video = plan.run("video", video_tracking, args, device, Path(clip))
    if video:
        results["video"] = video
    markdown = report(results, args, plan)
    memory_markdown = memory_table(memory, sorted(args.memory_sizes)) if memory else ""
    print(markdown + ("\n\nMemory of one training step, batch 1:\n\n" + memory_markdown if memory else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "memory": memory, "timings": plan.timings,
                                               "skipped": plan.skipped}, indent=1, default=str) + "\n")
    if args.write:
        write(markdown, memory_markdown, args, device, load)
    return 0


def write(markdown: str, memory_markdown: str, args: argparse.Namespace, device: torch.device, load: float) -> None:
    """This run's entries in BENCHMARKS.md: the memory table in bench_memory's section."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    date = datetime.date.today().isoformat()
    command = f"Command: `python bench/gpu_check.py {shlex.join(sys.argv[1:])}`"
    head = f"Machine: {machine()}; load average at start {load:.2f}.  \n{command}"
    append_entry(HEADING, f"\n### {date}: {args.model} on {where}\n\n{head}\n\n{markdown}\n", REPO / "BENCHMARKS.md")
    if memory_markdown:
        append_entry(MEMORY_HEADING, f"\n### {date}: {args.model}, batch 1, {args.queries} text queries, on {where}, "
                     f"peak `torch.cuda.max_memory_allocated` during the step\n\n{head}\n\n{memory_markdown}\n",
                     REPO / "BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
