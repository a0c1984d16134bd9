"""``sam3-lora export``: a thin layer over ``export``."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_config_args, config_from_args

EXPORT_EPILOG = """\
examples:
  sam3-lora export --weights runs/cracks/best --merged sam3-cracks       # plain transformers model
  sam3-lora export --weights runs/cracks/best --merged sam3-cracks-bf16 --dtype bfloat16   # half the size
  sam3-lora export --weights runs/cracks/best --adapter-only cracks-lora # a few MB to share
"""


def cmd_export(args: argparse.Namespace) -> int:
    """Export an adapter merged into its base model, or as a clean adapter folder."""
    from sam3_lora.export.merged import export_adapter, export_merged

    if args.merged:
        out = export_merged(args.weights, args.merged, config_from_args(args) if args.config else None,
                            dtype=args.dtype)
        print(f"merged model ({args.dtype}) in {out}: load it with transformers' Sam3Model.from_pretrained('{out}')")
    else:
        out = export_adapter(args.weights, args.adapter_only)
        print(f"adapter in {out}: load it with sam3_lora.load_adapter(base_model, '{out}')")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``export``."""
    export = commands.add_parser("export", help="merge an adapter into SAM3, or copy it to share",
                                 description=cmd_export.__doc__, epilog=EXPORT_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(export)
    export.add_argument("--weights", required=True, metavar="DIR", help="the adapter folder")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="OUT", help="write base + adapter merged, transformers format")
    target.add_argument("--adapter-only", metavar="OUT", help="copy just the adapter's files")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="with --merged: dtype of the written weights (merged in float32 first)")
    export.set_defaults(func=cmd_export)
