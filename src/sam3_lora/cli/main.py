"""The ``sam3-lora`` command: the parser, and the one place user errors become one line.

Every command that reads a config takes ``--config FILE_OR_PRESET`` plus overrides written
``section.key=value`` and the original tool's flags (``--batch_size``, ``--learning_rate``,
``--num_epochs``, ``--lora_rank``). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from sam3_lora import __version__
from sam3_lora.cli import app, data, demo, evaluate, export, predict, train, validate
from sam3_lora.cpu import share_cpu
from sam3_lora.errors import Sam3LoraError, Sam3LoraWarning

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


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's Python name (argparse's ``dest``) -> its flag, over every command: how a
    library error's ``option`` is named on the command line."""
    flags, parsers = {}, [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if action.option_strings:
                flags.setdefault(action.dest, action.option_strings[-1])
            if isinstance(action.choices, dict):
                parsers.extend(action.choices.values())
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-lora",
        description="LoRA fine-tuning of SAM3 on your own COCO data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sam3-lora {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (demo, train, validate, evaluate, predict, export, data, app):
        group.add_parser(commands)
    return parser


MAX_WARNING_CHARS = 300


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning as users of a command read it: ``warning: ...``, one line, without
    the source file and line of code Python prints by default."""
    if isinstance(message, Sam3LoraWarning):   # name its option as a flag, as errors do
        flags = option_flags(build_parser())
        message = message.worded(lambda option: flags.get(option, option))
    text = " ".join(str(message).split())
    if len(text) > MAX_WARNING_CHARS:
        text = text[:MAX_WARNING_CHARS - 3] + "..."
    kind = "" if category in (UserWarning, Sam3LoraWarning) else f" ({category.__name__})"
    return f"warning{kind}: {text}\n"


def main(argv: list[str] | None = None) -> int:
    shown = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = shown


def _run(argv: list[str] | None) -> int:
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
    share_cpu()   # before any command loads torch: passive waiting, threads for the free CPUs
    try:
        return int(args.func(args) or 0)
    except Sam3LoraError as exc:
        flags = option_flags(parser)
        print(f"error: {exc.worded(lambda option: flags.get(option, option))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
