"""Why the demo looks as it does: its target domain and LoRA recipe against the alternatives.

Each variant is ``sam3-lora demo`` (``run_demo``) with another target domain, LoRA settings
or replay, on the demo's full budget (seed 0). Reported: target mAP and cgF1 before -> after,
and mAP on held-out images of the base's own concepts before -> after (forgetting).

    python bench/demo_choices.py [--scale tiny|cpu-full|gpu] [--write]

``tiny`` runs the first two variants only; the other scales run all (about 8 minutes on 2
CPU cores: the model is the tiny base whatever the scale).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import append_entry, machine

from sam3_lora.recipes.demo import BASE_CONCEPTS, BUDGETS, TARGET, run_demo

HEADING = "## The demo: LoRA on a domain the base never saw"
KNOWN_COLOURS = {"colors": BASE_CONCEPTS["colors"], "shapes": ("star", "hexagon", "cross"), "background": ("stripes",)}
TWELVE = {"colors": ("purple", "orange", "cyan", "magenta"), "shapes": ("star", "hexagon", "cross"),
          "background": ("stripes",)}
FULL = BUDGETS["full"]
# (label, target, overrides of configs/demo.yaml, replayed base images)
VARIANTS = [
    ("known colours, new shapes on stripes (12 concepts)", KNOWN_COLOURS, [], FULL.replay_images),
    ("new colours and new shapes on stripes (12 concepts)", TWELVE, [], FULL.replay_images),
    ("the demo: 3 new concepts on stripes", TARGET, [], FULL.replay_images),
    ("same, no LoRA on the text encoder", TARGET, ["lora.apply_to_text_encoder=false"], FULL.replay_images),
    # (a vision encoder that trains cannot have its features cached)
    ("same, LoRA on the vision encoder too", TARGET, ["lora.apply_to_vision_encoder=true", "data.cache_features=off"],
     FULL.replay_images),
    ("same, no replayed base images", TARGET, [], 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "cpu-full", "gpu"], default="cpu-full")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    lines = ["| variant | target mAP | target cgF1 | base-concept mAP |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for index, (label, target, overrides, replay) in enumerate(VARIANTS[:2] if args.scale == "tiny" else VARIANTS):
            budget = dataclasses.replace(FULL, replay_images=replay)
            summary = run_demo(Path(work) / str(index), target=target, budget=budget, overrides=overrides,
                               say=lambda *_: None)
            concepts = summary["base_concepts"]
            base, tuned = summary["base"], summary["finetuned"]
            lines.append(f"| {label} | {base['mAP']:.3f} -> {tuned['mAP']:.3f} | {base['cgF1']:.3f} -> {tuned['cgF1']:.3f} | "
                         f"{concepts['base']['mAP']:.3f} -> {concepts['finetuned']['mAP']:.3f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_entry(HEADING, f"\n### {date.today()}: target and recipe choices\n\nCommand: "
                              f"`python bench/demo_choices.py --scale {args.scale} --write`  \n"
                              f"Machine: {machine()}\n\n{table}\n")


if __name__ == "__main__":
    main()
