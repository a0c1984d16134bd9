"""The ``sam3-lora`` command: a thin layer over the Python API.

Every command that reads a config takes ``--config FILE_OR_PRESET`` plus overrides written
``section.key=value`` and the original tool's flags (``--batch_size``, ``--learning_rate``,
``--num_epochs``, ``--lora_rank``). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from sam3_lora import __version__
from sam3_lora.config import LEGACY_FLAGS, Config, load_config
from sam3_lora.errors import Sam3LoraError

EPILOG = """\
examples:
  sam3-lora demo                                       the whole loop on the bundled tiny base, CPU, minutes
  sam3-lora info --config balanced                     LoRA table of a preset, no training
  sam3-lora info --config my.yaml lora.rank=8          any key can be overridden
  sam3-lora data synth data/shapes                     synthetic COCO data to try things on
  sam3-lora data validate data/my_dataset              check a dataset before training
  sam3-lora train --config demo data.root=data/shapes output.dir=runs/shapes   LoRA on the tiny base, CPU
  sam3-lora validate --config runs/shapes/config.yaml  mAP, cgF1 and a report of the best adapter
presets: minimal, balanced, full, demo, base (see configs/)
"""

VALIDATE_EPILOG = """\
examples:
  sam3-lora validate --config runs/cracks/config.yaml                  best/ adapter on valid/
  sam3-lora validate --config runs/cracks/config.yaml --split test --compare-base
  sam3-lora validate --config balanced data.root=data/cracks --no-lora  the base model alone
"""

TRAIN_EPILOG = """\
examples:
  sam3-lora train --config balanced data.root=data/cracks output.dir=runs/cracks
  sam3-lora train --config runs/cracks/config.yaml --resume runs/cracks
  accelerate launch --num_processes 4 -m sam3_lora.cli train --config balanced   (multi-GPU)
"""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``section.key=value`` overrides and the legacy flags."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config, or a preset name: minimal, balanced, full, demo, base")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override any config key, e.g. lora.rank=8 training.max_steps=100")
    for flag, key in LEGACY_FLAGS.items():
        parser.add_argument(f"--{flag}", default=None, metavar="VALUE", help=f"same as {key}=VALUE")


def config_from_args(args: argparse.Namespace) -> Config:
    legacy = [f"{key}={getattr(args, flag)}" for flag, key in LEGACY_FLAGS.items()
              if getattr(args, flag, None) is not None]
    return load_config(args.config, [*args.overrides, *legacy])


def cmd_info(args: argparse.Namespace) -> int:
    """Model source, LoRA placement and trainable share, without loading weights."""
    import torch
    from transformers import Sam3Model

    from sam3_lora.lora import apply_lora_to_model, count_parameters, format_summary, lora_summary
    from sam3_lora.model import load_sam3_config
    from sam3_lora.roi_align import install_fallback

    config = config_from_args(args)
    install_fallback()
    model_config = load_sam3_config(config.model.source, config.model.revision, config.model.image_size)
    # The meta device builds the architecture without allocating weights: instant even at 840M.
    with torch.device("meta"):
        model = apply_lora_to_model(Sam3Model(model_config), config.lora, verbose=False)
    size = model_config.vision_config.backbone_config.image_size
    print(f"model:   {config.model.source} ({size} px)")
    print(f"lora:    rank {config.lora.rank}, alpha {config.lora.alpha:g}, "
          f"layers {', '.join(config.lora.target_modules)}")
    print(format_summary(lora_summary(model), count_parameters(model)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune SAM3 with LoRA as the config says; writes the run folder (output.dir)."""
    from sam3_lora.train import SAM3LoRATrainer, TrainingInterrupted

    if args.skip_invalid:
        args.overrides.append("data.skip_invalid=true")
    trainer = SAM3LoRATrainer(config_from_args(args), resume=args.resume)
    try:
        summary = trainer.train()
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    print(json.dumps(summary))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Score the fine-tuned (or base) model on a split: COCO mAP, cgF1, validation loss, the
    forgetting check; writes metrics.json, predictions.json (COCO results) and report.md."""
    from sam3_lora.evaluate import validate

    validate(config_from_args(args), weights=args.weights, split=args.split, num_samples=args.num_samples,
             no_lora=args.no_lora, compare_base=args.compare_base, positives_only=args.positives_only,
             output=args.output)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on the bundled pretrained tiny base, on CPU: make a target domain the base
    never saw, score the base, fine-tune with LoRA, score again (and the base's own concepts,
    for forgetting), then print a before/after table and write a report, overlays and
    summary.json into --output."""
    from sam3_lora.demo import run_demo

    run_demo(args.output, quick=args.quick, overwrite=args.overwrite, overrides=args.overrides, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-lora",
        description="LoRA fine-tuning of SAM3 on your own COCO data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sam3-lora {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="the whole loop on the bundled tiny base: before/after in minutes",
                               description=cmd_demo.__doc__)
    demo.add_argument("--output", default="runs/demo", metavar="DIR", help="run folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="less data and training: about a minute")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value",
                      help="change the demo's config, e.g. training.learning_rate=0 (no gain expected)")
    demo.set_defaults(func=cmd_demo)
    info = commands.add_parser("info", help="show the model and where LoRA goes, without training",
                               description=cmd_info.__doc__)
    add_config_args(info)
    info.set_defaults(func=cmd_info)
    train = commands.add_parser("train", help="fine-tune SAM3 on a COCO dataset (LoRA, or every weight)",
                                description=cmd_train.__doc__, epilog=TRAIN_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(train)
    train.add_argument("--resume", metavar="RUN_DIR|auto", default=None,
                       help="continue a run exactly where it stopped (auto: output.dir's newest checkpoint)")
    train.add_argument("--skip-invalid", action="store_true",
                       help="train despite dataset errors, skipping (and listing) every bad item")
    train.set_defaults(func=cmd_train)
    check = commands.add_parser("validate", help="score a fine-tuned model: mAP, cgF1, loss, report",
                                description=cmd_validate.__doc__, epilog=VALIDATE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(check)
    check.add_argument("--weights", metavar="DIR", help="adapter folder (default: output.dir/best)")
    check.add_argument("--split", choices=["valid", "test"], help="split to score (default: evaluation.split)")
    check.add_argument("--num-samples", type=int, metavar="N", help="score only the first N images")
    check.add_argument("--no-lora", action="store_true", help="evaluate the base model, no adapter")
    check.add_argument("--compare-base", action="store_true",
                       help="also score the base model (adapter switched off) and show both side by side")
    check.add_argument("--positives-only", action="store_true",
                       help="accept a split without negative (image, prompt) units; cgF1 is then undefined")
    check.add_argument("--output", metavar="DIR", help="where results go (default: output.dir/eval-SPLIT)")
    check.set_defaults(func=cmd_validate)
    from sam3_lora.cli_app import add_app_parser
    from sam3_lora.cli_data import add_data_parser
    from sam3_lora.cli_eval import add_evaluate_parser
    from sam3_lora.cli_predict import add_predict_parsers

    add_evaluate_parser(commands)
    add_predict_parsers(commands, add_config_args)
    add_data_parser(commands)
    add_app_parser(commands, add_config_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    # PEFT 0.21 calls an attribute transformers 5 renamed; the warning says nothing to users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    parser = build_parser()
    # Overrides may stand anywhere, also after flags, which argparse's positionals refuse.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Sam3LoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
