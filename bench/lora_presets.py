"""Trainable parameters and adapter size of each LoRA preset on the full-size SAM3.

Builds the real architecture (random weights, 840M parameters, ~4 GB of RAM) once per
preset, applies the preset's LoRA, saves the adapter and reports what a user will see.
Usage: python bench/lora_presets.py [--model sam3|sam3-tiny]   (sam3-tiny: a smoke run)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sam3_lora.config import load_config
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model, count_parameters, lora_summary
from sam3_lora.model.loading import load_sam3

PRESETS = ("minimal", "balanced", "full")


def measure(preset: str, source: str = "sam3") -> dict:
    config = load_config(preset)
    started = time.perf_counter()
    model = apply_lora_to_model(load_sam3(source).model, config.lora, verbose=False)
    count = count_parameters(model)
    with tempfile.TemporaryDirectory() as folder:
        saved = save_adapter(model, Path(folder) / preset, base_source=source)
        size = (saved / "adapter_model.safetensors").stat().st_size
    return {
        "preset": preset,
        "rank": config.lora.rank,
        "modules": sum(m for m, _ in lora_summary(model).values()),
        "trainable": count.trainable,
        "percent": count.percent,
        "adapter_mb": size / 2**20,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3", help="architecture preset (sam3: the real 840M)")
    args = parser.parse_args()
    rows = [measure(preset, args.model) for preset in PRESETS]
    print(f"model {args.model}")
    print("| preset | rank | modules | trainable | % trainable | adapter (fp32) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['preset']} | {row['rank']} | {row['modules']} | {row['trainable']:,} | "
              f"{row['percent']:.3f}% | {row['adapter_mb']:.1f} MB |")


if __name__ == "__main__":
    main()
