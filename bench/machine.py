"""What every benchmark writes into BENCHMARKS.md: the line saying what it ran on, and
its entry, appended to its own section."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU count and model, RAM, torch version, and the GPU where CUDA is available: e.g.
    '2 CPUs (nproc 2), Intel Xeon, 24 GiB RAM, torch 2.13.0+cpu'."""
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
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, {ram}, torch {torch.__version__}{gpu}"


def append_entry(heading: str, entry: str, path: Path | None = None) -> None:
    """Append ``entry`` at the end of the ``heading`` section of BENCHMARKS.md (the section is
    created at the end of the file if missing), leaving every other section as it is."""
    path = path or Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n"
    head, _, tail = text.partition(heading)
    cut = tail.find("\n## ")   # the next section, if any
    section, rest = (tail, "") if cut < 0 else (tail[:cut], tail[cut:])
    path.write_text(head + heading + section.rstrip("\n") + "\n" + entry + rest)
