"""``sam3-lora demo``: the whole loop on the bundled tiny base."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_command


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on the bundled pretrained tiny base, on CPU: make a target domain the base
    never saw, score the base, fine-tune with LoRA, score again (and the base's own concepts,
    for forgetting), then print a before/after table and write a report, overlays and
    summary.json into --output. ``--task interactive`` does the same for the tracker (clicks)."""
    if args.task == "interactive":
        from sam3_lora.recipes.demo_interactive import run_interactive_demo as run
    else:
        from sam3_lora.recipes.demo import run_demo as run

    output = args.output or ("runs/demo" if args.task == "concept" else "runs/demo-interactive")
    run(output, quick=args.quick, overwrite=args.overwrite, overrides=args.overrides, seed=args.seed, say=print)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    demo = add_command(commands, "demo", cmd_demo, "the whole loop on the bundled tiny base: before/after in minutes",
                       config=False)
    demo.add_argument("--task", choices=("concept", "interactive"), default="concept",
                      help="concept: the detector learns new phrases (default); interactive: the tracker "
                           "learns to segment new shapes from clicks")
    demo.add_argument("--output", default=None, metavar="DIR",
                      help="run folder (default: runs/demo, or runs/demo-interactive with --task interactive)")
    demo.add_argument("--quick", action="store_true", help="less data and training: about a minute")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value",
                      help="change the demo's config, e.g. training.learning_rate=0 (no gain expected)")
