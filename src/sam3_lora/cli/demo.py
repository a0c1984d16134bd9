"""``sam3-lora demo``: the whole loop on the bundled tiny base."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_command

DEFAULT_OUTPUTS = {"concept": "runs/demo", "interactive": "runs/demo-interactive", "video": "runs/demo-video"}


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on the bundled pretrained tiny base, on CPU: make a target domain the base
    never saw, score the base, fine-tune with LoRA, score again (and the base's own concepts,
    for forgetting), then print a before/after table and write a report, overlays and
    summary.json into --output. ``--task interactive`` does the same for the tracker (clicks),
    ``--task video`` for the video tracker (objects followed through clips, J&F)."""
    if args.task == "interactive":
        from sam3_lora.recipes.demo_interactive import run_interactive_demo as run
    elif args.task == "video":
        from sam3_lora.recipes.demo_video import run_video_demo as run
    else:
        from sam3_lora.recipes.demo import run_demo as run

    output = args.output or DEFAULT_OUTPUTS[args.task]
    run(output, quick=args.quick, overwrite=args.overwrite, overrides=args.overrides, seed=args.seed, say=print)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    demo = add_command(commands, "demo", cmd_demo, "the whole loop on the bundled tiny base: before/after in minutes",
                       config=False)
    demo.add_argument("--task", choices=tuple(DEFAULT_OUTPUTS), default="concept",
                      help="concept: the detector learns new phrases (default); interactive: the tracker "
                           "learns to segment new shapes from clicks; video: the video tracker learns to follow "
                           "objects of a new look through clips (J&F before and after)")
    demo.add_argument("--output", default=None, metavar="DIR",
                      help="run folder (default: runs/demo, runs/demo-interactive or runs/demo-video, by --task)")
    demo.add_argument("--quick", action="store_true",
                      help="less data and training: about a minute (--task video: about three)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value",
                      help="change the demo's config, e.g. training.learning_rate=0 (no gain expected)")
