"""``sam3-lora info`` and ``sam3-lora train``: where LoRA goes, and fine-tuning."""

from __future__ import annotations

import argparse
import json
import sys

from sam3_lora.cli.common import add_command, config_from_args
from sam3_lora.config import LEGACY_FLAGS

TRAIN_EPILOG = """\
examples:
  sam3-lora train --config balanced data.root=data/cracks output.dir=runs/cracks
  sam3-lora train --config runs/cracks/config.yaml --resume runs/cracks
  sam3-lora train --config balanced data.root=data/cracks output.dir=runs/cracks --overwrite   (a new run there)
  accelerate launch --num_processes 4 -m sam3_lora.cli train --config balanced   (multi-GPU)
"""


def cmd_info(args: argparse.Namespace) -> int:
    """Model source, LoRA placement and trainable share, without loading weights; or, with
    --explain, what config keys mean."""
    from sam3_lora.config import explain, reference_markdown
    from sam3_lora.errors import ConfigError

    if args.markdown and (args.explain is None or args.explain):
        raise ConfigError("--markdown prints the whole reference: give it with --explain alone "
                          "(info --explain --markdown), or drop it")
    if args.markdown:
        print(reference_markdown())
        return 0
    if args.explain is not None:
        given = args.config or args.overrides or any(getattr(args, flag) for flag in LEGACY_FLAGS)
        print(explain(args.explain or None, config_from_args(args) if given else None))
        return 0
    from sam3_lora.lora.apply import preview
    from sam3_lora.model.loading import load_sam3_config
    from sam3_lora.model.quantize import size_line
    from sam3_lora.training.schedule import describe_evaluation

    config = config_from_args(args)
    print(preview(config))
    print(size_line(load_sam3_config(config.model.source, config.model.revision, config.model.image_size),
                    config.model.quantize))
    print(describe_evaluation(config.training))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune SAM3 with LoRA as the config says; writes the run folder (output.dir)."""
    from sam3_lora.recipes.train import SAM3LoRATrainer, TrainingInterrupted

    if args.skip_invalid:
        args.overrides.append("data.skip_invalid=true")
    trainer = SAM3LoRATrainer(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    try:
        summary = trainer.train()
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    print(json.dumps(summary))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``info`` and ``train``."""
    info = add_command(commands, "info", cmd_info, "show the model and where LoRA goes, without training")
    info.add_argument("--explain", nargs="?", const="", metavar="KEY",
                      help="print what a config key (section.key), a section or (alone) every key means; with "
                      "--config or overrides, also the values they give")
    info.add_argument("--markdown", action="store_true",
                      help="with --explain and no key: the whole reference as Markdown (docs/config.md)")
    train = add_command(commands, "train", cmd_train, "fine-tune SAM3 on a COCO dataset (LoRA, or every weight)",
                        epilog=TRAIN_EPILOG)
    train.add_argument("--resume", metavar="RUN_DIR|auto", default=None,
                       help="continue a run exactly where it stopped (auto: output.dir's newest checkpoint)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in output.dir (without it, or --resume, a used output.dir "
                            "is refused)")
    train.add_argument("--skip-invalid", action="store_true",
                       help="train despite dataset errors, skipping (and listing) every bad item")
