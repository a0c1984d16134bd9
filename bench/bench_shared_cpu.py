"""A command beside other busy processes: time alone, beside one, beside two.

    python bench/bench_shared_cpu.py [--busy 0 1 2] [--settings auto old one] [--timeout 600] [--write]
                                     [--command "sam3-lora ..."]

The command (default: ``sam3-lora demo --quick`` into a temporary folder) runs once per
(number of busy processes, setting); a busy process is a Python loop that never sleeps, as a
compile or another training job would be. Settings:

  auto  what sam3-lora does by itself (``cpu.share_cpu``: passive waiting, threads for the
        CPUs left free)
  old   what it did before: one spin-waiting thread per CPU (``OMP_NUM_THREADS`` = the CPUs,
        ``GOMP_SPINCOUNT=300000``, libgomp's default spin before sleeping)
  one   one thread, passive waiting

Reports wall and CPU time (of the command and its children) and the ratio to the same
setting alone; a run past ``--timeout`` is stopped and reported as such. ``--write`` appends
the table to BENCHMARKS.md, "A shared CPU".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date

from machine import append_entry, machine

SETTINGS = {
    "auto": {},
    "old": {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))), "GOMP_SPINCOUNT": "300000"},
    "one": {"OMP_NUM_THREADS": "1"},
}
BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` processes that keep a CPU each busy for as long as the block runs."""
    processes = [subprocess.Popen(BUSY_LOOP) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)   # they are running before the command starts
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(command: list[str], setting: str, busy: int, timeout: float) -> dict:
    """Wall and CPU seconds of one run of ``command`` beside ``busy`` busy processes."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    environ.update(SETTINGS[setting])
    with busy_processes(busy):
        cpu_before, start = children_cpu_seconds(), time.perf_counter()
        try:
            subprocess.run(command, env=environ, check=True, timeout=timeout,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        wall = time.perf_counter() - start
        # Read before the busy loops (children too) are reaped, so that only the command counts.
        cpu = children_cpu_seconds() - cpu_before
    return {"setting": setting, "busy": busy, "wall_s": wall, "finished": finished, "cpu_s": cpu}


def table(rows: list[dict]) -> str:
    alone = {r["setting"]: r["wall_s"] for r in rows if r["busy"] == 0 and r["finished"]}
    lines = ["| setting | busy processes | wall s | CPU s | x alone |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        wall = f"{r['wall_s']:.1f}" if r["finished"] else f"> {r['wall_s']:.0f} (stopped)"
        ratio = f"{r['wall_s'] / alone[r['setting']]:.2f}" if r["setting"] in alone and r["finished"] else "-"
        lines.append(f"| {r['setting']} | {r['busy']} | {wall} | {r['cpu_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["auto", "old"])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--command", help="the command to time, as one string (default: demo --quick)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        command = shlex.split(args.command) if args.command else ["sam3-lora", "demo", "--quick", "--overwrite", "--output", f"{folder}/demo"]
        rows = []
        for setting in args.settings:
            for busy in args.busy:
                rows.append(run_once(command, setting, busy, args.timeout))
                print(rows[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        append_entry("## A shared CPU", f"\n{date.today()}, {machine()}: `{' '.join(command[:3])} ...` "
                                        f"(`python bench/bench_shared_cpu.py {' '.join(sys.argv[1:])}`)\n\n{text}\n")


if __name__ == "__main__":
    main()
