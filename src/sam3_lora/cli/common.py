"""What every command shares: ``--config`` with overrides, and the help layout."""

from __future__ import annotations

import argparse

from sam3_lora.config import LEGACY_FLAGS, Config, load_config, preset_names


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example blocks as written; shows an option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default, text = action.default, action.help or ""
        if default is None or default is False or default == argparse.SUPPRESS:
            return text
        if not action.option_strings or "%(default)" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``section.key=value`` overrides and the legacy flags."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help=f"YAML config, or a preset name: {', '.join(preset_names())}")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override any config key, e.g. lora.rank=8 training.max_steps=100")
    for flag, key in LEGACY_FLAGS.items():   # --lora-rank; the original tool's --lora_rank works too
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, metavar="VALUE",
                            help=f"same as {key}=VALUE")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config that ``--config``, the overrides and the legacy flags describe."""
    legacy = [f"{key}={getattr(args, flag)}" for flag, key in LEGACY_FLAGS.items()
              if getattr(args, flag, None) is not None]
    return load_config(args.config, [*args.overrides, *legacy])


def add_command(commands: argparse._SubParsersAction, name: str, func, help: str, *, epilog: str | None = None,
                config: bool = True) -> argparse.ArgumentParser:
    """Register one command: its one-line ``help``, ``func``'s docstring as the description,
    the ``epilog``'s examples kept as written, and (``config``) ``--config`` with overrides."""
    parser = commands.add_parser(name, help=help, description=func.__doc__, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        add_config_args(parser)
    parser.set_defaults(func=func)
    return parser
