"""Training-step cost: shared vs repeated image encoding, and ViT checkpointing.

One training step = forward of one image with K text queries, SAM3's loss (with auxiliary
layers) on synthetic targets, backward, AdamW step, with the ``balanced`` LoRA preset.
"shared" encodes the image once for its K queries (what the trainer does); "repeated" runs
the full model once per query, as a naive loop would. Every configuration runs in a fresh
process so its peak memory is its own: resident memory (RSS) on CPU, the most memory torch
allocated on the GPU when CUDA is available (the model then runs there).

Usage: python bench/bench_train.py --model sam3-tiny|sam3 [--image-size 336] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

QUERIES = (1, 4, 8)


def benchmark_device() -> torch.device:
    """Where the benchmarks run: the GPU when CUDA is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: the most memory torch allocated on the GPU since the last
    ``torch.cuda.reset_peak_memory_stats``; CPU: this process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux: KiB


def to_device(targets: list[dict], device: torch.device) -> list[dict]:
    """``synthetic_targets`` on ``device``."""
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def synthetic_targets(queries: int, mask_size: int, generator: torch.Generator) -> list[dict]:
    """One or two boxes per query (cxcywh in [0,1]) with rectangular masks."""
    targets = []
    for _ in range(queries):
        n = int(torch.randint(1, 3, (1,), generator=generator))
        centres = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.2 + 0.1
        boxes = torch.cat([centres, sizes], dim=1)
        masks = torch.zeros(n, mask_size, mask_size, dtype=torch.bool)
        for i, (cx, cy, w, h) in enumerate((boxes * mask_size).int().tolist()):
            masks[i, cy - h // 2: cy + h // 2, cx - w // 2: cx + w // 2] = True
        targets.append({"boxes": boxes, "masks": masks, "has_mask": torch.ones(n, dtype=torch.bool), "category_id": 1})
    return targets


def run_one(model_source: str, image_size: int | None, queries: int, shared: bool, checkpointing: bool,
            steps: int) -> dict:
    """Measured in this process: seconds per step (after one warm-up step) and peak memory
    (RSS on CPU; on CUDA the GPU's peak allocation, the key ``peak_cuda_gb``)."""
    from sam3_lora.config import LossConfig, load_config
    from sam3_lora.data.collate import mask_size_for
    from sam3_lora.lora.apply import apply_lora_to_model
    from sam3_lora.loss.criterion import build_criterion
    from sam3_lora.model.forward import capture_aux_outputs, forward_queries
    from sam3_lora.model.loading import load_sam3
    from sam3_lora.training.resources import enable_activation_checkpointing

    device = benchmark_device()
    loaded = load_sam3(model_source, image_size=image_size)
    model = apply_lora_to_model(loaded.model, load_config("balanced").lora, verbose=False).to(device).train()
    if checkpointing:
        enable_activation_checkpointing(model, every=1)
    size = loaded.processor.image_size
    built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    criterion = build_criterion(LossConfig())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, size, size, generator=generator).to(device)
    text = {k: v.to(device) for k, v in loaded.processor.text([f"concept {i}" for i in range(queries)]).items()}
    targets = to_device(synthetic_targets(queries, mask_size_for(size), generator), device)
    index = torch.zeros(queries, dtype=torch.long, device=device)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        if shared:   # one encoding of the image for all its prompts
            out = forward_queries(model, index, pixel_values=pixels, aux_outputs=True, **text)
        else:        # the image encoded again for every prompt
            with capture_aux_outputs(model) as aux:
                out = {**model(pixel_values=pixels[index], **text), "aux_outputs": aux}
        losses = criterion(out, targets)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
        times.append(time.perf_counter() - started)
    memory_key = "peak_cuda_gb" if device.type == "cuda" else "peak_rss_gb"
    return {"model": model_source, "image_size": size, "queries": queries, "encoding": "shared" if shared else "repeated",
            "checkpointing": checkpointing, "s_per_step": sum(times[1:]) / steps,
            memory_key: peak_memory_gb(device), "model_rss_gb": built_rss, "device": device.type}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3-tiny")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="address-space cap per configuration on CPU (this machine has 24 GB); none on CUDA")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="ViT activation checkpointing in the measured configurations")
    parser.add_argument("--one", help=argparse.SUPPRESS)   # internal: run one configuration
    args = parser.parse_args()
    if args.one:
        queries, shared, checkpointing = json.loads(args.one)
        print(json.dumps(run_one(args.model, args.image_size, queries, shared, checkpointing, args.steps)))
        return
    rows = []
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.checkpointing]
    # An address-space cap would stop CUDA from starting: on a GPU, out of memory is the GPU's.
    limit_gb = None if torch.cuda.is_available() else args.memory_limit_gb
    for checkpointing in modes:
        for queries in QUERIES:
            for shared in (True, False):
                if queries == 1 and not shared:
                    continue   # one query: the two are the same computation
                command = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps),
                           "--one", json.dumps([queries, shared, checkpointing])]
                if args.image_size:
                    command += ["--image-size", str(args.image_size)]
                rows.append(run_child(command, queries, shared, checkpointing, limit_gb))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows)


def run_child(command: list[str], queries: int, shared: bool, checkpointing: bool, limit_gb: float | None) -> dict:
    """One configuration in a child process (see ``run_capped``); out of memory gives a row
    saying so."""
    row = run_capped(command, limit_gb)
    if row is not None:
        return row
    return {"queries": queries, "encoding": "shared" if shared else "repeated", "checkpointing": checkpointing,
            "s_per_step": None, "peak_rss_gb": None, "oom": oom_text(limit_gb)}


def child_environment() -> dict[str, str]:
    """This process's environment, with glibc's mmap threshold fixed at 128 kB (unless set):
    every allocation above it is its own mapping, handed back to the system when freed, so a
    CPU process's RSS follows the tensors alive, as ``torch.cuda.max_memory_allocated`` does.
    glibc's default raises the threshold after large frees (up to 32 MB), after which freed
    activations stay in the heap: at 1008 px that kept 1.4 GB more in a ``heads`` step's peak RSS
    (2026-12-08); entries before that date were measured so."""
    return {"MALLOC_MMAP_THRESHOLD_": str(128 * 2**10), **os.environ}


def run_capped(command: list[str], limit_gb: float | None) -> dict | None:
    """Run ``command`` in a child process whose address space is capped at ``limit_gb`` (no
    cap if None, as CUDA needs): an allocation past the cap fails inside torch (reported as
    out of memory) instead of waking the OOM killer. Returns the JSON object the child
    printed last, or None if it ran out of memory (CPU or GPU); raises on any other failure."""
    def cap() -> None:
        limit = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(command, capture_output=True, text=True, check=False, env=child_environment(),
                            preexec_fn=cap if limit_gb is not None else None)
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    if "memory" not in result.stderr.lower() and "alloc" not in result.stderr.lower():
        raise RuntimeError(f"{' '.join(command[1:])} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return None


def oom_text(limit_gb: float | None) -> str:
    """What an out-of-memory cell says: the CPU cap, or the GPU."""
    return f"> {limit_gb:g} GB" if limit_gb is not None else "GPU out of memory"


def print_table(rows: list[dict]) -> None:
    measured = next(r for r in rows if "model" in r)
    cuda = measured.get("device") == "cuda"
    memory, memory_key = ("peak CUDA memory", "peak_cuda_gb") if cuda else ("peak RSS", "peak_rss_gb")
    print(f"model {measured['model']} at {measured['image_size']} px, LoRA preset balanced, 1 image per step"
          + (f", on {torch.cuda.get_device_name()}" if cuda else ""))
    print(f"| queries | checkpointing | shared s/step | repeated s/step | speed-up | shared {memory} | repeated {memory} |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for checkpointing in sorted({r["checkpointing"] for r in rows}):
        for queries in QUERIES:
            pick = {r["encoding"]: r for r in rows if r["queries"] == queries and r["checkpointing"] == checkpointing}
            shared = pick["shared"]
            repeated = pick.get("repeated", shared)
            ratio = (f"{repeated['s_per_step'] / shared['s_per_step']:.2f}x"
                     if shared["s_per_step"] and repeated["s_per_step"] else "-")
            print(f"| {queries} | {'on' if checkpointing else 'off'} | {_cell(shared, 's_per_step', '{:.2f}')} | "
                  f"{_cell(repeated, 's_per_step', '{:.2f}')} | {ratio} | {_cell(shared, memory_key, '{:.1f} GB')} | "
                  f"{_cell(repeated, memory_key, '{:.1f} GB')} |")


def _cell(row: dict, key: str, form: str) -> str:
    return form.format(row[key]) if row.get(key) is not None else f"OOM ({row['oom']})"


if __name__ == "__main__":
    main()
