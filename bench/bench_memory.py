"""Peak memory of one LoRA training step: preset x image size x checkpointing x base dtype x quantization.

The table behind the presets' defaults and the README's "memory at 1008 px" table. Each
configuration is a fresh process running ``bench_steps.py --one --steps 0``: the model built
(random weights) in the base dtype by the trainer's ``load_sam3``, its Linear layers quantized
as ``model.quantize`` does for ``--quantize nf4`` (bitsandbytes; computing in the base dtype),
the preset's LoRA, then ONE training step of one image
with ``--queries`` text queries (forward under autocast for a bfloat16 base, SAM3's loss with
auxiliary layers, backward, clipping, AdamW, whose state is created before the step, as in
every later step). Memory: on CUDA ``torch.cuda.max_memory_allocated`` during the step; on CPU
the process's peak RSS during the step (the kernel's high-water mark, reset after the model
is built, so a float32 build before a bfloat16 cast does not count), model included. Also
reported: the memory held once the model and LoRA are loaded.

Configurations run from the smallest image size up. On a shared CPU machine, a configuration
whose estimate (the same configuration at the largest smaller size measured, its memory above
the loaded model scaled by the pixel count) would not fit the memory available, less
``--reserve-gb``, waits for memory others hold (up to ``--wait-minutes``; not at all when
it would not fit the machine's whole memory) and is then skipped and marked so; each process is also capped (address space) at what is available, and one past the cap
waits and runs again if others' use had lowered the cap, else is marked OOM. ``--resume``
keeps the configurations the ``--json`` file already measured.

    python bench/bench_memory.py [--model sam3] [--image-sizes 336 672 1008]
        [--presets minimal balanced full heads] [--checkpointing off|on|both]
        [--dtypes float32 bfloat16] [--quantize none nf4] [--queries 4] [--reserve-gb 2] [--wait-minutes 30]
        [--dry-run] [--write] [--json OUT [--resume]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch
from bench_steps import child_command  # bench/bench_steps.py (scripts run from bench/)
from bench_train import oom_text, run_capped
from machine import append_entry, machine

from sam3_lora.model.quantize import METHODS

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Peak memory of a LoRA training step"
PRECISION = {"float32": "no", "bfloat16": "bf16"}   # a bfloat16 base computes under bf16 autocast
# The table's columns: (base dtype, checkpointing).
COLUMNS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))


def available_gb(field: str = "MemAvailable") -> float:
    """Memory the system can give a new process now (``MemTotal``: with nothing else running)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/meminfo")


def configurations(sizes: list[int], presets: list[str], checkpointing: list[bool], dtypes: list[str],
                   quantize: tuple[str, ...] = ("none",)) -> list[tuple[int, str, str, bool, str]]:
    """(image size, preset, dtype, checkpointing, model.quantize), smallest sizes first."""
    return [(size, preset, dtype, ckpt, method) for size in sorted(sizes) for dtype in dtypes
            for method in quantize for ckpt in checkpointing for preset in presets]


def estimate_gb(rows: list[dict], size: int, preset: str, dtype: str, ckpt: bool,
                quantize: str = "none") -> tuple[float | None, str | None]:
    """(estimated peak, reason to skip): from the same configuration at the largest smaller size.
    Above the loaded model, memory grows with the pixel count (the ViT's tokens, the masks)."""
    prior = [r for r in rows if key(r)[1:] == (preset, dtype, ckpt, quantize) and r["image_size"] < size]
    if not prior:
        return None, None
    last = max(prior, key=lambda r: r["image_size"])
    if "peak_memory_gb" not in last:
        return None, (f"out of memory at {last['image_size']} px" if "oom" in last
                      else f"not run at {last['image_size']} px either")
    scale = (size / last["image_size"]) ** 2
    return last["after_load_gb"] + (last["peak_memory_gb"] - last["after_load_gb"]) * scale, None


def measure(args: argparse.Namespace) -> list[dict]:
    """Every configuration, each in a fresh process (or skipped); rows in the order they ran.

    A configuration is ready once the same one at every smaller size is done (its estimate
    comes from there). The first ready one that fits the memory available now runs; on a CPU
    shared with others, the rest wait (up to ``--wait-minutes`` without any progress)."""
    modes = {"off": [False], "on": [True], "both": [True, False]}[args.checkpointing]   # the lighter first
    pending = configurations(args.image_sizes, args.presets, modes, args.dtypes, args.quantize)
    if args.dry_run:
        for size, preset, dtype, ckpt, method in pending:
            command = child_command(args.model, size, preset, 1, ckpt, PRECISION[dtype], args.queries, 0,
                                    dtype, method)
            print(f"{size} px {preset} {base_name(dtype, method)} checkpointing {'on' if ckpt else 'off'}: "
                  f"{shlex.join(['python', *command[1:]])}")
        return []
    rows: list[dict] = []
    if args.resume and args.json and Path(args.json).is_file():
        # Measured rows, and out of memory under the full cap (not one that others had lowered).
        done = {key(r): r for r in json.loads(Path(args.json).read_text())
                if "peak_memory_gb" in r or r.get("cap_gb", 0) >= args.memory_limit_gb}
        rows = [done[c] for c in pending if c in done]
        pending = [c for c in pending if c not in done]
    needed: dict[tuple, float] = {}   # more than an out-of-memory cap that others' use had lowered
    progress = time.monotonic()
    while pending:
        ready = [c for c in pending if not any(p[1:] == c[1:] and p[0] < c[0] for p in pending)]
        chosen, row = next_configuration(ready, rows, needed, args)
        if chosen is None:
            if time.monotonic() - progress < 60 * args.wait_minutes:
                time.sleep(30)
                continue
            chosen = ready[0]   # stalled: give up on the first ready one
            row = {"skipped": f"estimated {estimate_gb(rows, *chosen)[0] or needed.get(chosen, 0):.1f} GB > "
                              f"{available_gb() - args.reserve_gb:.1f} GB available"}
        head = {"model": args.model, "image_size": chosen[0], "preset": chosen[1], "dtype": chosen[2],
                "checkpointing": chosen[3], "quantize": chosen[4], "batch_size": 1,
                "queries_per_image": args.queries}
        row = {**head, **row} if row else run_one(head, args)
        if "oom" in row and row.pop("cap_lowered_by_others", False):
            needed[chosen] = row["cap_gb"] + 1.0   # run it again when that much more is free
            continue
        pending.remove(chosen)
        progress = time.monotonic()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:   # after every row: a long run killed midway keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def merged_rows(paths: list[str]) -> list[dict]:
    """The rows of several ``--json`` files, in the order first seen, one per configuration
    (the last file's)."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            merged[key(row)] = row
    return list(merged.values())


def key(row: dict) -> tuple:
    """A row's configuration (rows from before the quantize axis have a plain base)."""
    return row["image_size"], row["preset"], row["dtype"], row["checkpointing"], row.get("quantize", "none")


def base_name(dtype: str, quantize: str) -> str:
    """``bfloat16``, or ``nf4 (bfloat16)`` for a quantized base computing in bfloat16."""
    return dtype if quantize == "none" else f"{quantize} ({dtype})"


def next_configuration(ready: list[tuple], rows: list[dict], needed: dict, args: argparse.Namespace):
    """(configuration, row to record instead of running it or None), or (None, None) to wait."""
    cuda = torch.cuda.is_available()
    for config in ready:
        estimate, reason = estimate_gb(rows, *config)
        if reason:
            return config, {"skipped": reason}
        need = max(estimate or 0.0, needed.get(config, 0.0))
        if cuda:
            return config, None
        if need > available_gb("MemTotal") - args.reserve_gb:   # would not fit the whole machine
            return config, {"skipped": f"estimated {need:.1f} GB > {available_gb('MemTotal') - args.reserve_gb:.1f} "
                                       f"GB (all of this machine's memory less {args.reserve_gb:g} GB)"}
        if need <= available_gb() - args.reserve_gb:
            return config, None
    return None, None


def run_one(head: dict, args: argparse.Namespace) -> dict:
    """One configuration in a fresh process, capped (CPU) at the memory available now."""
    command = child_command(args.model, head["image_size"], head["preset"], 1, head["checkpointing"],
                            PRECISION[head["dtype"]], args.queries, 0, head["dtype"], head["quantize"])
    started = time.perf_counter()
    limit = None if torch.cuda.is_available() else min(args.memory_limit_gb, available_gb() - 1.0)
    try:
        measured = run_capped(command, limit)
    except RuntimeError as exc:   # one broken configuration must not end an hours-long run
        exit_status = re.search(r"failed \(exit (-?\d+)\)", str(exc))
        measured = {"failed": f"exit {exit_status[1] if exit_status else '?'}: {str(exc).strip().splitlines()[-1][:200]}"}
    if measured:
        return {**head, **measured, "wall_s": round(time.perf_counter() - started, 1)}
    lowered = limit is not None and limit < args.memory_limit_gb
    return {**head, "oom": oom_text(limit), "cap_gb": limit, "cap_lowered_by_others": lowered}


LEGEND = {
    "not run (est.": "not run (est. N GB): the same configuration at the next smaller size, its memory above the "
                     "loaded model scaled by the pixel count, did not leave RESERVE GB of this machine's memory",
    "not run |": "not run: not run at the smaller size either",
    "OOM": "OOM (> N GB): the process's address space reached its cap (a bit above its RSS)",
    "failed": "failed: the process ended without a result (see the run's log)",
}


def cell(row: dict | None) -> str:
    """One table cell: the peak, or why there is none (LEGEND says what each means)."""
    if row is None:
        return "-"
    if "peak_memory_gb" in row:
        return f"{row['peak_memory_gb']:.2f} GB"
    if "oom" in row:
        return f"OOM ({row['oom']})"
    if "failed" in row:
        return "failed"
    estimate = re.match(r"estimated ([\d.]+) GB", row["skipped"])
    return f"not run (est. {estimate[1]} GB)" if estimate else "not run"


def table(rows: list[dict], sizes: list[int] | None = None, reserve_gb: float = 2.0) -> str:
    """Markdown: one line per (image size, preset), the four (dtype, checkpointing) columns,
    then the memory held by the loaded model (float32 / bfloat16); where quantized bases were
    measured, their columns after those (``quantized_columns``) and their loaded model."""
    memory = next((r["memory"] for r in rows if "memory" in r), "peak memory")
    extra = quantized_columns(rows)
    bases = list(dict.fromkeys((dtype, method) for dtype, method, _ in extra))
    header = ("| px | preset | float32 base | float32 base, checkpointing | bfloat16 base | "
              "bfloat16 base, checkpointing | loaded model (float32 / bfloat16) |"
              + "".join(f" {method} base ({dtype}){', checkpointing' * ckpt} |" for dtype, method, ckpt in extra)
              + "".join(f" loaded model ({method}, {dtype}) |" for dtype, method in bases))
    lines = [header, "|---:|---|" + "---:|" * (5 + len(extra) + len(bases))]
    by_key = {key(r): r for r in rows}
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    for size in sizes or sorted({r["image_size"] for r in rows}):
        for preset in presets:
            if not any(k[:2] == (size, preset) for k in by_key):   # a preset not run at this size
                continue
            cells = [cell(by_key.get((size, preset, dtype, ckpt, "none"))) for dtype, ckpt in COLUMNS]
            loaded = [loaded_gb(by_key, size, preset, dtype, "none") for dtype in ("float32", "bfloat16")]
            line = f"| {size} | {preset} | {' | '.join(cells)} | {' / '.join(loaded)} GB |"
            line += "".join(f" {cell(by_key.get((size, preset, dtype, ckpt, method)))} |" for dtype, method, ckpt in extra)
            quantized = [loaded_gb(by_key, size, preset, dtype, method) for dtype, method in bases]
            line += "".join(" - |" if value == "-" else f" {value} GB |" for value in quantized)
            lines.append(line)
    body = "\n".join(lines)
    legend = [text for mark, text in LEGEND.items() if mark in body]
    notes = f"\n\n{'; '.join(legend).replace('RESERVE', f'{reserve_gb:g}')}." if legend else ""
    runtimes = sorted({f"{r['runtime_gb']:.2f}" for r in rows if "runtime_gb" in r}, key=float)
    if runtimes and memory == "peak RSS":
        span = runtimes[0] if len(runtimes) == 1 else f"{runtimes[0]}-{runtimes[-1]}"
        notes += (f"\n\nEvery peak and loaded model includes the process's runtime (Python, torch and the "
                  f"libraries, before any model: {span} GB in the rows that recorded it), which a GPU does "
                  "not hold.")
    return f"Peak: {memory} during the step.\n\n{body}{notes}"


def quantized_columns(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(compute dtype, model.quantize, checkpointing) of the quantized bases among ``rows``:
    the table's extra columns, checkpointing off before on."""
    found = {(r["dtype"], r["quantize"], r["checkpointing"]) for r in rows if r.get("quantize", "none") != "none"}
    return sorted(found, key=lambda column: (column[1], column[0], column[2]))


def loaded_gb(by_key: dict[tuple, dict], size: int, preset: str, dtype: str, quantize: str) -> str:
    """The memory held by the loaded base and LoRA, from any checkpointing row (it does not
    change it), or "-"."""
    return next((f"{r['after_load_gb']:.2f}" for (s, p, d, _, q), r in by_key.items()
                 if (s, p, d, q) == (size, preset, dtype, quantize) and "after_load_gb" in r), "-")


def record(markdown: str, args: argparse.Namespace, load: float) -> None:
    """Append this run as a dated entry at the end of HEADING's section of BENCHMARKS.md."""
    where = (f"on {torch.cuda.get_device_name()}, peak `torch.cuda.max_memory_allocated` during the step"
             if torch.cuda.is_available() else
             "on the CPU, peak RSS of a fresh process during the step (a proxy for GPU memory)")
    entry = (f"\n### {datetime.date.today().isoformat()}: {args.model}, batch 1, {args.queries} text queries, "
             f"{where}\n\nMachine: {machine()}; load average at start {load:.2f}.  \n"
             f"Command: `python bench/bench_memory.py {shlex.join(sys.argv[1:])}`\n\n{markdown}\n")
    append_entry(HEADING, entry, REPO / "BENCHMARKS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3", help="preset (sam3, sam3-tiny), folder or hub id")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[336, 672, 1008])
    parser.add_argument("--presets", nargs="+", default=["minimal", "balanced", "full"])
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--dtypes", nargs="+", choices=list(PRECISION), default=["bfloat16", "float32"])
    parser.add_argument("--quantize", nargs="+", choices=METHODS, default=["none"],
                        help="model.quantize of the base (bitsandbytes), each computing in each of --dtypes")
    parser.add_argument("--queries", type=int, default=4, help="text queries per image")
    parser.add_argument("--reserve-gb", type=float, default=2.0,
                        help="CPU: skip a configuration estimated to leave less than this free")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="CPU: address-space cap per configuration, at most (this machine has 24 GB)")
    parser.add_argument("--wait-minutes", type=float, default=30.0,
                        help="CPU: how long a configuration may wait for memory others hold")
    parser.add_argument("--resume", action="store_true", help="keep the rows the --json file already measured")
    parser.add_argument("--dry-run", action="store_true", help="list the configurations and commands, run none")
    parser.add_argument("--write", action="store_true", help=f"append the table under {HEADING!r} in BENCHMARKS.md")
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON to OUT (after every configuration)")
    parser.add_argument("--table-from", nargs="+", metavar="JSON",
                        help="measure nothing: one table of these --json files' rows (a run made in parts); "
                             "a later file's row replaces an earlier one's of the same configuration")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = merged_rows(args.table_from) if args.table_from else measure(args)
    if args.dry_run:
        return
    sizes = sorted({r["image_size"] for r in rows}) if args.table_from else sorted(args.image_sizes)
    markdown = table(rows, sizes, args.reserve_gb)
    print(markdown)
    if args.write:
        record(markdown, args, load)


if __name__ == "__main__":
    main()
