"""Why the demo looks as it does: its target domain and LoRA recipe against the alternatives.

Each variant is ``sam3-lora demo`` (``run_demo``) with another target domain, LoRA settings
or replay, on one budget (200 target images, 200 steps, 40 test images, seed 0). Reported:
target mAP before -> after, and mAP on held-out images of the base's own concepts before ->
after (forgetting).

    python bench/demo_choices.py [--scale tiny|cpu-full|gpu] [--write]

``tiny`` runs the first two variants only; the other scales run all (about 10 minutes on 2
CPU cores: the model is the tiny base whatever the scale).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import append_entry, machine

from sam3_lora.recipes.demo import BASE_CONCEPTS, TARGET, Budget, run_demo

HEADING = "## The demo: LoRA on a domain the base never saw"
KNOWN_COLOURS = {"colors": BASE_CONCEPTS["colors"], "shapes": ("star", "hexagon"), "background": ("stripes",)}
RANK_8 = ["lora.rank=8", "lora.alpha=16", "training.learning_rate=3e-3"]
BASE_NEGATIVES = ("data.negative_phrases=[" + ", ".join(f"{c} {s}" for c in BASE_CONCEPTS["colors"]
                                                          for s in BASE_CONCEPTS["shapes"]) + "]")
# (label, target, overrides, replayed base images)
VARIANTS = [
    ("known colours, new shapes on stripes; rank 8, lr 3e-3", KNOWN_COLOURS, RANK_8, 0),
    ("new colours and shapes on stripes (the demo's); rank 8, lr 3e-3", TARGET, RANK_8, 0),
    ("same, lr 1e-3", TARGET, [*RANK_8, "training.learning_rate=1e-3"], 0),
    ("same, lr 1e-2", TARGET, [*RANK_8, "training.learning_rate=1e-2"], 0),
    ("same, no LoRA on the vision encoder", TARGET, [*RANK_8, "lora.apply_to_vision_encoder=false"], 0),
    ("same, absent base concepts as negative phrases", TARGET, [*RANK_8, BASE_NEGATIVES, "data.num_negatives=6"], 0),
    ("same, rank 8, lr 3e-3, 50 replayed base images", TARGET, RANK_8, 50),
    ("the demo preset (rank 4, lr 1e-3)", TARGET, [], 0),
    ("the demo preset, 50 replayed base images", TARGET, [], 50),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "cpu-full", "gpu"], default="cpu-full")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    lines = ["| variant | target mAP | base-concept mAP |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for index, (label, target, overrides, replay) in enumerate(VARIANTS[:2] if args.scale == "tiny" else VARIANTS):
            budget = Budget(train_images=200, test_images=40, steps=200, replay_images=replay)
            summary = run_demo(Path(work) / str(index), target=target, budget=budget, overrides=overrides,
                               say=lambda *_: None)
            concepts = summary["base_concepts"]
            lines.append(f"| {label} | {summary['base']['mAP']:.3f} -> {summary['finetuned']['mAP']:.3f} | "
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
