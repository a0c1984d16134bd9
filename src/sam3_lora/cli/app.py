"""``sam3-lora app``: a thin layer over ``serve.app`` (the model) and ``serve.app_ui`` (the page)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from sam3_lora.cli.common import add_command, config_from_args
from sam3_lora.serve.limits import MAX_UPLOAD_MB

APP_EPILOG = """\
examples:
  sam3-lora app --config runs/cracks/config.yaml                 best/ and last/ of the run
  sam3-lora app --config balanced --weights cracks-lora other-lora
  sam3-lora app --config runs/cracks/config.yaml --host 0.0.0.0   reachable from other machines
  sam3-lora app --config runs/cells-tracker/config.yaml           model.task=interactive: clicks

serves http://HOST:PORT: upload an image or pick an example, type prompts (and boxes), pick
an adapter or the base model, see the overlay, the detections and the time taken, side by
side with the base model if asked; download the overlay PNG and the COCO-results JSON.
With model.task=interactive (SAM3's tracker) the page takes clicks instead: click on an
object (positive or negative), undo or clear clicks, add a box; the mask follows each click.
Listens on 127.0.0.1 only unless --host says otherwise. Needs gradio: pip install "sam3-lora[app]".
"""


def cmd_app(args: argparse.Namespace) -> int:
    """Try adapters in the browser: one model in memory, adapters switched by name."""
    from sam3_lora.serve.app import AppError

    if importlib.util.find_spec("gradio") is None:   # before the model loads, not after
        raise AppError('the app needs gradio, which is not installed: pip install "sam3-lora[app]"')
    if args.max_upload_mb <= 0:
        raise AppError(f"--max-upload-mb {args.max_upload_mb:g}: must be above 0")
    from sam3_lora.serve.app import AdapterApp, bind_warning
    from sam3_lora.serve.app_ui import launch

    app = AdapterApp(config_from_args(args), args.weights, max_upload_mb=args.max_upload_mb)
    print(f"adapters: {', '.join(app.choices)}")
    warning = bind_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    launch(app, args.host, args.port)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``app`` on the main parser."""
    app = add_command(commands, "app", cmd_app, "try adapters in a web page (gradio)", epilog=APP_EPILOG)
    app.add_argument("--weights", nargs="+", action="extend", default=[], metavar="DIR",
                     help="more adapter folders to offer, besides output.dir's best/ and last/")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                     help=f"largest image upload accepted (default {MAX_UPLOAD_MB:g})")
