"""The line every benchmark writes into BENCHMARKS.md to say what it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU count and model, RAM, torch version: e.g. '2 CPUs (nproc 2), Intel Xeon, 24 GiB RAM'."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ram = f"{pages / 2**30:.0f} GiB RAM"
    except (OSError, ValueError):
        ram = "unknown RAM"
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, {ram}, torch {torch.__version__}"
