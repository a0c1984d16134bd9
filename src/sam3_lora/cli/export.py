"""``sam3-lora export``: a thin layer over ``export``."""

from __future__ import annotations

import argparse

from sam3_lora.cli.common import add_command, config_from_args

EXPORT_EPILOG = """\
examples:
  sam3-lora export --weights runs/cracks/best --merged sam3-cracks       # plain transformers model
  sam3-lora export --weights runs/cracks/best --merged sam3-cracks-bf16 --dtype bfloat16   # half the size
  sam3-lora export --weights runs/cracks/best --adapter-only cracks-lora # a few MB to share
  sam3-lora export --weights runs/cracks/best --onnx cracks-onnx         # onnxruntime, no torch to run it
  sam3-lora export --weights runs/cracks/best --onnx cracks-int8 --quantize int8
  sam3-lora export --weights cracks-onnx --onnx cracks-int8 --quantize int8   # INT8 copy of an ONNX export
  sam3-lora export --config tracker.yaml --weights runs/clicks/best --onnx clicks-onnx   # model.task: interactive

--onnx needs the onnx extra: pip install 'sam3-lora[onnx]'. Run the result with
`sam3-lora predict --onnx OUT --image ... --prompt ...` or sam3_lora.SAM3OnnxInference(OUT); a
tracker export (two graphs: encode the image once, decode each click) with `--points ...` or
sam3_lora.serve.onnx_tracker.SAM3OnnxTracker(OUT).
"""


def cmd_export(args: argparse.Namespace) -> int:
    """Export an adapter merged into its base model, as a clean adapter folder, or as ONNX
    graphs for onnxruntime."""
    from sam3_lora.export.merged import ExportError, export_adapter, export_merged

    onnx_only = [flag for flag, value in (("--quantize", args.quantize), ("--opset", args.opset)) if value is not None]
    if onnx_only and args.onnx is None:
        raise ExportError(f"{onnx_only[0]} applies to --onnx exports only; add --onnx OUT or drop {onnx_only[0]}")
    if args.dtype != "float32" and not args.merged:
        raise ExportError("--dtype applies to --merged exports only; add --merged OUT or drop --dtype")
    if args.onnx is not None:   # '' too: export_onnx refuses an empty path in one line
        from sam3_lora.export.onnx import DEFAULT_OPSET, export_onnx
        from sam3_lora.export.onnx_tracker import export_tracker_onnx_from

        config = config_from_args(args) if args.config or args.overrides else None
        tracker = config is not None and config.model.task == "interactive"
        export = export_tracker_onnx_from if tracker else export_onnx
        out = export(args.weights, args.onnx, config, opset=DEFAULT_OPSET if args.opset is None else args.opset,
                     quantize=args.quantize, progress=lambda line: print(line, flush=True))
        prompt = "--points X,Y" if tracker else "--prompt TEXT"
        print(f"ONNX export in {out}: run it with `sam3-lora predict --onnx {out} --image IMAGE {prompt}`")
    elif args.merged:
        out = export_merged(args.weights, args.merged, config_from_args(args) if args.config else None,
                            dtype=args.dtype)
        print(f"merged model ({args.dtype}) in {out}: load it with transformers' Sam3Model.from_pretrained('{out}') "
              f"and Sam3Processor.from_pretrained('{out}')")
    else:
        out = export_adapter(args.weights, args.adapter_only)
        print(f"adapter in {out}: load it with sam3_lora.load_adapter(base_model, '{out}')")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``export``."""
    export = add_command(commands, "export", cmd_export, "merge an adapter into SAM3, copy it to share, or export ONNX",
                         epilog=EXPORT_EPILOG)
    export.add_argument("--weights", required=True, metavar="DIR",
                        help="the adapter folder, or a whole-model folder (training.method: full)")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="OUT", help="write base + adapter merged, transformers format")
    target.add_argument("--adapter-only", metavar="OUT", help="copy just the adapter's files")
    target.add_argument("--onnx", metavar="OUT", help="write ONNX graphs, tokenizer and settings for onnxruntime")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="with --merged: dtype of the written weights (merged in float32 first)")
    export.add_argument("--quantize", choices=["int8"], help="with --onnx: dynamic INT8 of the vision and text "
                        "encoders (the tracker's image encoder) (faster on CPU; its accuracy cost is in BENCHMARKS.md)")
    export.add_argument("--opset", type=int, metavar="N", help="with --onnx: ONNX opset (default 18)")
