"""``sam3-lora validate``: score a fine-tuned model on a split."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_command, config_from_args

VALIDATE_EPILOG = """\
examples:
  sam3-lora validate --config runs/cracks/config.yaml                  best/ adapter on valid/
  sam3-lora validate --config runs/cracks/config.yaml --split test --compare-base
  sam3-lora validate --config balanced data.root=data/cracks --no-lora  the base model alone
  sam3-lora validate --config runs/clips/config.yaml --compare-base    model.task=video: J, F, J&F

With model.task=video the split is a DAVIS / YouTube-VOS folder (JPEGImages/, Annotations/):
each object is prompted with its ground-truth mask on its first frame and tracked to the end
(DAVIS's semi-supervised protocol); --num-samples counts sequences.
"""


def cmd_validate(args: argparse.Namespace) -> int:
    """Score the fine-tuned (or base) model on a split: COCO mAP, cgF1, validation loss, the
    forgetting check; writes metrics.json, predictions.json (COCO results) and report.md. A
    tracker (model.task=interactive) is scored by simulated clicks, a video tracker
    (model.task=video) by DAVIS's J, F and J&F on a video split: metrics.json and report.md."""
    from sam3_lora.evaluation.metrics import format_table
    from sam3_lora.recipes.validate import validate

    summary = validate(config_from_args(args), weights=args.weights, split=args.split,
                       num_samples=args.num_samples, no_lora=args.no_lora, compare_base=args.compare_base,
                       positives_only=args.positives_only, output=args.output, task=args.task)
    if "J&F" in summary:   # model.task: video, DAVIS's semi-supervised protocol
        from sam3_lora.recipes.validate_video import format_video

        print(format_video(summary))
        print(f"wrote {summary['output']}/metrics.json and report.md")
        return 0
    if "mIoU_1" in summary:   # model.task: interactive, scored by simulated clicks
        from sam3_lora.recipes.validate_interactive import format_interactive

        print(format_interactive(summary))
        print(f"wrote {summary['output']}/metrics.json and report.md")
        return 0
    print(format_table(summary, summary.get("base")))
    if summary.get("val_loss") is not None:
        print(f"validation loss {summary['val_loss']:.4f}")
    print(f"wrote {summary['output']}/metrics.json, predictions.json and report.md")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``validate``."""
    check = add_command(commands, "validate", cmd_validate,
                        "score a fine-tuned model: mAP, cgF1, loss (a tracker: clicks; a video tracker: J&F), report",
                        epilog=VALIDATE_EPILOG)
    check.add_argument("--weights", metavar="DIR", help="adapter folder (default: output.dir/best)")
    check.add_argument("--split", choices=["valid", "test"], help="split to score (default: evaluation.split)")
    check.add_argument("--num-samples", type=int, metavar="N", help="score only the first N images (sequences "
                       "of a video split)")
    check.add_argument("--no-lora", action="store_true", help="evaluate the base model, no adapter")
    check.add_argument("--task", metavar="NAME", help="with data.datasets: the dataset to score, through its "
                       "adapters (lora.task_adapters)")
    check.add_argument("--compare-base", action="store_true",
                       help="also score the base model (adapter switched off) and show both side by side")
    check.add_argument("--positives-only", action="store_true",
                       help="accept a split without negative (image, prompt) units; cgF1 is then undefined")
    check.add_argument("--output", metavar="DIR", help="where results go (default: output.dir/eval-SPLIT)")
