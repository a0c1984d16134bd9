"""What the benchmarks read back from a training run's folder: its speed and its adapter's size."""

from __future__ import annotations

import json
from pathlib import Path


def seconds_per_step(run: Path, batch_size: int) -> float:
    """The run's last logged training speed (``metrics.jsonl``'s ``samples_per_s``), as seconds
    per optimiser step of ``batch_size`` samples."""
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return batch_size / [r["samples_per_s"] for r in logs if "samples_per_s" in r][-1]


def adapter_mb(folder: Path) -> float:
    """Size on disk of an adapter folder (MiB), its subfolders (task adapters) included."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
