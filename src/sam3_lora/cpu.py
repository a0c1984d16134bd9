"""Sharing the CPU: how many threads a command runs, and how they wait.

PyTorch's CPU kernels run on OpenMP threads, one per core by default, which spin while they
wait for each other. On a machine that is not ours alone that is ruinous: a thread whose core
is taken by another process arrives late to every parallel region while the others spin on
theirs (measured on 2 cores beside one busy process: ``demo --quick`` took 101 s with passive
waiting and did not finish in 500 s without it, against about 35 s alone). So, before torch
is loaded, a command

- makes the threads wait passively (``OMP_WAIT_POLICY=PASSIVE``): a waiting thread sleeps and
  gives its core away, and
- runs as many threads as there are CPUs free for it: the CPUs it may use (its affinity mask
  and cgroup quota) less those other processes kept busy over a short look at ``/proc/stat``.

Whatever the user set (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``) is kept. Both variables are
read once, when the OpenMP runtime starts with torch, so this must run first: the command line
calls ``share_cpu()`` before any command imports torch. The choice is made once; a process
that starts later is not seen (BENCHMARKS.md, "A shared CPU", has the measurements).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LOOK_SECONDS = 0.1
"""How long ``/proc/stat`` is watched to see how busy the CPUs are (10 clock ticks per CPU
at Linux's usual 100 Hz: enough to tell a busy core from an idle one)."""


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, bounded by a cgroup v2 quota
    (``cpu.max``, as containers set it) where there is one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from ``/proc/stat``; None where it
    cannot be read (not Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    total = sum(fields[:8])   # guest time is already inside user time
    return total - idle, total


def busy_cpus(seconds: float = LOOK_SECONDS) -> float:
    """How many of the machine's CPUs other processes keep busy, averaged over ``seconds``
    (this process sleeps meanwhile); 0.0 where ``/proc/stat`` cannot be read."""
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    busy_fraction = (after[0] - before[0]) / (after[1] - before[1])
    return busy_fraction * (os.cpu_count() or 1)


def free_cpus() -> int:
    """The CPUs free for this process now: the usable ones less those kept busy (rounded to
    the nearest whole CPU), at least 1."""
    return max(1, min(usable_cpus(), round(usable_cpus() - busy_cpus())))


def share_cpu(environ: dict | None = None) -> int | None:
    """Set, in ``environ`` (``os.environ``), passive waiting and the thread count for a
    process that is about to load torch, unless the user set them; returns the thread count
    in force (None where torch is already loaded: its OpenMP runtime has read them, and a
    process that imported torch itself, e.g. a test calling the command line in-process, is
    left as it is)."""
    if "torch" in sys.modules:
        return None
    environ = os.environ if environ is None else environ
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not environ.get("OMP_NUM_THREADS", "").strip():
        environ["OMP_NUM_THREADS"] = str(free_cpus())
    return int(environ["OMP_NUM_THREADS"]) if environ["OMP_NUM_THREADS"].isdigit() else usable_cpus()


def openmp_settings(environ: dict | None = None) -> tuple[int | None, bool]:
    """(thread count or None, whether waiting is passive) as this process's OpenMP variables
    say: what runtimes with their own thread pools (onnxruntime) follow, so that ``share_cpu``
    governs them too."""
    environ = os.environ if environ is None else environ
    threads = environ.get("OMP_NUM_THREADS", "").strip()
    return (int(threads) if threads.isdigit() and int(threads) > 0 else None,
            environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE")
