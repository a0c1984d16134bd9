"""The ``sam3-lora`` command: the parser, and the one place user errors become one line.

Every command that reads a config takes ``--config FILE_OR_PRESET`` plus overrides written
``section.key=value`` and the original tool's flags (``--batch-size``, ``--learning-rate``,
``--num-epochs``, ``--lora-rank``). Every flag may be spelt with ``_`` or ``-`` (the original
tool wrote ``--lora_rank``). User errors print one line and exit with status 2; an unknown
flag gets its command's usage and the nearest flag. Output into a closed pipe (``| head``)
ends quietly, as standard tools do.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings

from sam3_lora import __version__
from sam3_lora.cli import app, data, demo, evaluate, export, predict, track, train, validate
from sam3_lora.config import preset_names
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
presets: {presets} (see configs/); flags take - or _ alike (--lora-rank, --lora_rank)
"""
# What a process killed by SIGPIPE returns in a shell (128 + 13), as `yes | head` leaves it.
BROKEN_PIPE_STATUS = 141


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every command's (and sub-command's) parser under it."""
    found, pending = [], [parser]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += [choice for action in current._actions if isinstance(action.choices, dict)
                    for choice in action.choices.values()]
    return found


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's Python name (argparse's ``dest``) -> its flag, over every command: how a
    library error's ``option`` is named on the command line."""
    flags = {}
    for current in all_parsers(parser):
        for action in current._actions:
            if action.option_strings:
                flags.setdefault(action.dest, action.option_strings[-1])
    return flags


def spelled_as_declared(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with each ``--flag`` written with ``_`` where it is declared with ``-`` (or the
    reverse) respelt as declared: ``--lora_rank`` (the original tool's) is ``--lora-rank``,
    ``--skip_invalid`` is ``--skip-invalid``. Flags declared as written, values and
    everything after ``--`` are left alone."""
    declared = {flag for current in all_parsers(parser) for flag in current._option_string_actions
                if flag.startswith("--")}
    respelt = []
    for index, item in enumerate(argv):
        if item == "--":
            return respelt + argv[index:]
        name, sep, value = item.partition("=")
        if item.startswith("--") and name not in declared:
            body = name[2:]
            name = next((f"--{s}" for s in (body.replace("_", "-"), body.replace("-", "_"))
                         if f"--{s}" in declared), name)
        respelt.append(name + sep + value if item.startswith("--") else item)
    return respelt


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command (and sub-command) ``args`` were parsed for."""
    current = parser
    while True:
        commands = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, commands.dest, None) if commands else None
        if name not in (commands.choices if commands else {}):
            return current
        current = commands.choices[name]


def unknown_flag_hint(flag: str, parser: argparse.ArgumentParser) -> str:
    """'; did you mean --X?' with the nearest of ``parser``'s flags to ``flag``, or ''."""
    flags = [f for f in parser._option_string_actions if f.startswith("--")]
    close = difflib.get_close_matches(flag.partition("=")[0][:100], flags, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-lora",
        description="LoRA fine-tuning of SAM3 on your own COCO data.",
        epilog=EPILOG.format(presets=", ".join(preset_names())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sam3-lora {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (demo, train, validate, evaluate, predict, track, export, data, app):
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
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Python would also fail flushing
        # stdout at exit and print "Exception ignored ..."; point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    finally:
        warnings.formatwarning = shown


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = spelled_as_declared(sys.argv[1:] if argv is None else list(argv), parser)
    # Overrides may stand anywhere, also after flags, which argparse's positionals refuse.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        command = chosen_parser(parser, args)
        first = (stray or extra)[0]
        hint = unknown_flag_hint(first, command) if first.startswith("--") else ""
        command.error(f"unrecognized arguments: {' '.join(stray or extra)}{hint}")
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
