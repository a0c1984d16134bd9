"""Run every benchmark in bench/ at one scale: the one entry point.

    python bench/run.py --scale tiny|cpu-full|gpu [--write] [--only NAME ...]

Scales:
  tiny      sam3-tiny everywhere, few repeats: a smoke run of every benchmark on 2 CPU
            cores (the numbers mean little; lora_study, which trains, takes the longest).
  cpu-full  the full-size SAM3 architecture at 336 px on the CPU: the settings of the CPU
            sections of BENCHMARKS.md (hours on 2 cores; about 20 GB of RAM).
  gpu       the full-size SAM3 at 1008 px, bf16 where the benchmark has a precision option,
            on a CUDA GPU; refused where torch.cuda is not available. The quick check of
            what a GPU must confirm (under 8 minutes on an H100/H200):
            ``python bench/run.py --scale gpu --only gpu_check --write``.

bench_memory (peak memory of a training step, 336/672/1008 px) runs the full grid at
cpu-full too: hours on 2 cores, one configuration at a time (run it alone, under the lock
for big jobs); gpu_check has no CPU-sized run and only prints its plan at cpu-full.

Each benchmark runs as its own subprocess, in the order of run.py's table; its output is
shown as it comes, then one line with its result. A failure does not stop the others: the
failures are listed at the end and the exit status is non-zero. ``--write`` records each
benchmark's result in BENCHMARKS.md where the benchmark can (each has its own flag for it;
this script passes the right one); without it nothing is written.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCALES = ("tiny", "cpu-full", "gpu")
HELPERS = ("machine.py", "run.py", "run_folder.py", "ship_tracker.py", "new_video_memory.py",
           "memory_by_module.py")   # bench/ scripts that are no benchmark

# How each benchmark records into BENCHMARKS.md: "--write" (pass it to write), "--no-write"
# (it writes unless told not to), or None (it only prints).
WRITE, NO_WRITE, PRINTS = "--write", "--no-write", None

SAM3_336 = ["--model", "sam3", "--image-size", "336"]
SAM3_1008 = ["--model", "sam3", "--image-size", "1008"]
EVAL_FULL = ["--images", "250", "--categories", "4", "--per-unit", "100", "--size", "256", "--repeats", "3"]

# (name, script in bench/, write convention, {scale: arguments})
BENCHMARKS = [
    ("lora_presets", "lora_presets.py", PRINTS, {
        "tiny": ["--model", "sam3-tiny"],
        "cpu-full": [],
        "gpu": [],
    }),
    ("bench_train", "bench_train.py", PRINTS, {
        "tiny": ["--model", "sam3-tiny", "--steps", "1", "--checkpointing", "on"],
        "cpu-full": [*SAM3_336, "--steps", "2"],
        "gpu": [*SAM3_1008, "--steps", "3"],
    }),
    ("bench_steps", "bench_steps.py", WRITE, {
        "tiny": ["--model", "sam3-tiny", "--steps", "1", "--batch-sizes", "2", "--checkpointing", "both"],
        "cpu-full": [*SAM3_336, "--steps", "2", "--batch-sizes", "1", "2", "4", "--checkpointing", "both"],
        "gpu": [*SAM3_1008, "--precision", "bf16", "--presets", "minimal", "balanced", "full",
                "--batch-sizes", "1", "2", "4", "--checkpointing", "both", "--steps", "5"],
    }),
    ("bench_predict", "bench_predict.py", PRINTS, {
        "tiny": ["--model", "sam3-tiny", "--image-size", "112", "--repeats", "1"],
        "cpu-full": [*SAM3_336, "--repeats", "3"],
        "gpu": [*SAM3_1008, "--repeats", "5"],
    }),
    ("bench_memory", "bench_memory.py", WRITE, {
        "tiny": ["--model", "sam3-tiny", "--image-sizes", "112", "224", "--presets", "minimal"],
        "cpu-full": [],
        "gpu": [],
    }),
    ("bench_precision", "bench_precision.py", WRITE, {
        "tiny": ["--images", "16"],
        "cpu-full": [],
        "gpu": ["--model", "sam3", "--prompts", "16"],
    }),
    ("gpu_check", "gpu_check.py", WRITE, {
        "tiny": ["--device", "cpu", "--model", "sam3-tiny", "--image-size", "112", "--memory-sizes", "112",
                 "--presets", "minimal", "--steps", "1", "--repeats", "1", "--held-out-images", "8"],
        "cpu-full": ["--dry-run"],
        "gpu": [],
    }),
    ("bench_data", "bench_data.py", NO_WRITE, {
        "tiny": ["--images", "12", "--batches", "4", "--repeats", "1", "--workers", "1", "--check-images", "8"],
        "cpu-full": [],
        "gpu": ["--workers", "1", "2", "4", "8"],
    }),
    ("bench_app", "bench_app.py", PRINTS, {
        "tiny": ["--side", "1000", "--prompts", "2"],
        "cpu-full": ["--side", "5000", "--prompts", "4"],
        "gpu": ["--side", "5000", "--prompts", "4"],
    }),
    ("bench_eval", "bench_eval.py", WRITE, {
        "tiny": ["--images", "20", "--categories", "2", "--per-unit", "10", "--size", "64", "--repeats", "1"],
        "cpu-full": EVAL_FULL,
        "gpu": EVAL_FULL,
    }),
    ("demo_choices", "demo_choices.py", WRITE, {
        "tiny": ["--scale", "tiny"],
        "cpu-full": ["--scale", "cpu-full"],
        "gpu": ["--scale", "gpu"],
    }),
    ("bench_onnx", "bench_onnx.py", WRITE, {
        "tiny": ["--model", "sam3-tiny-shapes", "--repeats", "3", "--map-images", "20"],
        "cpu-full": [*SAM3_336, "--repeats", "3"],
        "gpu": [*SAM3_336, "--repeats", "3"],   # CPU backends: onnxruntime runs on the CPU here
    }),
    ("bench_shared_cpu", "bench_shared_cpu.py", WRITE, {
        "tiny": ["--busy", "0", "1", "--settings", "auto", "--command", "sam3-lora info --config demo"],
        "cpu-full": [],   # demo --quick alone, beside one and two busy processes: auto vs old (~15 min)
        "gpu": [],
    }),
    ("bench_track", "bench_track.py", WRITE, {
        "tiny": ["--frames", "4"],
        "cpu-full": [],   # 300 frames of 854x480 on the bundled base (about a minute)
        "gpu": [],        # gpu_check.py's section 5 is the GPU measurement of track
    }),
    ("bench_small_gpu", "bench_small_gpu.py", WRITE, {
        "tiny": ["--train-images", "8", "--epochs", "2", "--repeats", "1", "--steps", "4", "--test-images", "8"],
        "cpu-full": [],   # the bundled tiny base is what it measures: the defaults (minutes)
        "gpu": [],
    }),
    ("lora_study", "lora_study.py", WRITE, {
        "tiny": ["--scale", "tiny"],
        "cpu-full": ["--scale", "cpu-full"],
        "gpu": ["--scale", "gpu"],
    }),
    # every method on both targets: about 40 min on one CPU thread at the quick budget (tiny
    # runs two); --multitask shared per_task both adds the one-run comparisons
    ("peft_study", "peft_study.py", WRITE, {
        "tiny": ["--scale", "tiny", "--methods", "lora", "ia3", "--tasks", "demo"],
        "cpu-full": ["--scale", "cpu-full"],
        "gpu": ["--scale", "gpu"],
    }),
]


def command(script: str, args: list[str], write_flag: str | None, write: bool) -> list[str]:
    """The subprocess command of one benchmark, with its own way of saying write or not."""
    flags = []
    if write_flag == WRITE and write:
        flags = [WRITE]
    elif write_flag == NO_WRITE and not write:
        flags = [NO_WRITE]
    return [sys.executable, str(BENCH / script), *args, *flags]


def run(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with its output shown as it comes; its exit status and last output line."""
    tail: deque[str] = deque(maxlen=1)
    with subprocess.Popen(cmd, cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            print(f"    {line}", end="", flush=True)
            if line.strip():
                tail.append(line.strip())
    return process.returncode, tail[0] if tail else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--scale", choices=SCALES, required=True)
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[name for name, *_ in BENCHMARKS],
                        help="run only these benchmarks")
    args = parser.parse_args()
    if args.scale == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("run.py --scale gpu: torch.cuda is not available on this machine "
                  "(use --scale cpu-full or --scale tiny)", file=sys.stderr)
            return 2
    failures = []
    for name, script, write_flag, scales in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        cmd = command(script, scales[args.scale], write_flag, args.write)
        print(f"== {name}: {' '.join(['python', f'bench/{script}', *cmd[2:]])}", flush=True)
        started = time.perf_counter()
        status, last = run(cmd)
        seconds = time.perf_counter() - started
        if status == 0:
            print(f"== {name}: ok in {seconds:.0f} s", flush=True)
        else:
            failures.append(name)
            print(f"== {name}: FAILED (exit {status}) in {seconds:.0f} s: {last}", flush=True)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("all benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
