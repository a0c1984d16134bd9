"""``sam3-lora predict``: a thin layer over ``serve.inference`` (``serve.onnx_engine`` with ``--onnx``,
which imports no torch)."""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from sam3_lora.cli.common import add_command, config_from_args
from sam3_lora.config import LEGACY_FLAGS
from sam3_lora.data.images import IMAGE_SUFFIXES
from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import check_output, write_file

PREDICT_EPILOG = """\
examples:
  sam3-lora predict --config runs/cracks/config.yaml --image wall.jpg --prompt "concrete crack"
  sam3-lora predict --config runs/cracks/config.yaml --image photos/ --prompt crack spalling --output out/
  sam3-lora predict --config balanced --no-lora --image shelf.png --bboxes '[[10, 20, 200, 180]]'
  sam3-lora predict --onnx cracks-onnx --image wall.jpg --prompt "concrete crack"   # onnxruntime, no torch

writes, per image NAME: NAME.png (overlay: a colour per prompt, scores, legend) and NAME.json,
COCO results (image_id = the image's index, category_id = the prompt's index + 1, with
"prompt" and "box_xyxy"; masks as RLE) that `sam3-lora evaluate` reads.
"""

class PredictInputError(Sam3LoraError):
    """Images or output paths that cannot be used."""


def find_images(spec: str) -> list[Path]:
    """A file, a folder (its images, sorted) or a glob -> image paths."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        found = [path]
    else:
        found = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise PredictInputError(f"--image {spec}: no image found (give a file, a folder of images or a glob)")
    return found


def output_paths(images: list[Path], output: str) -> list[tuple[Path, Path]]:
    """(overlay PNG, JSON) per image: a .png path for one image, else a folder. Checked
    before any work: a path that names a file where a folder is needed, or that cannot be
    written, is refused here, not after the model has loaded."""
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix in IMAGE_SUFFIXES | {".json"} and (len(images) > 1 or suffix != ".png"):
        reason = (f"a file name, but --image gives {len(images)} images" if len(images) > 1
                  else "overlays are written as PNG")
        raise PredictInputError(f"--output {out}: {reason}; give "
                                f"{'a folder' if len(images) > 1 else 'a .png path or a folder'}")
    if len(images) == 1 and suffix == ".png":
        pairs = [(check_output(out, folder=False, what="--output"), out.with_suffix(".json"))]
        check_output(pairs[0][1], folder=False, what="--output")
    else:
        if out.exists() and not out.is_dir():
            raise PredictInputError(f"--output {out}: is a file; give a folder for several images")
        check_output(out, folder=True, what="--output")
        pairs = [(out / f"{image.stem}.png", out / f"{image.stem}.json") for image in images]
    inputs = {image.resolve() for image in images}
    for png, _ in pairs:
        if png.resolve() in inputs:
            raise PredictInputError(f"--output {png}: is an input image; choose another path (inputs are never overwritten)")
    return pairs


def parse_boxes(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise PredictInputError(f"{flag} {text!r}: not JSON; write boxes as '[[x1, y1, x2, y2], ...]' in pixels") from None


def check_onnx_flags(args: argparse.Namespace) -> None:
    """With --onnx the export folder is the whole model: the flags that choose a model or
    its input size cannot apply, and saying so beats ignoring them."""
    given = [flag for flag, value in (("--config", args.config), ("--weights", args.weights),
                                      ("--no-lora", args.no_lora), ("--resolution", args.resolution),
                                      ("section.key=value overrides", args.overrides),
                                      *((f"--{flag.replace('_', '-')}", getattr(args, flag, None)) for flag in LEGACY_FLAGS))
             if value]
    if given:
        raise PredictInputError(f"{given[0]} does not apply with --onnx (the export folder holds the model, "
                                f"its weights and its input size); drop it")


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment what the prompts name in each image: an overlay PNG and COCO-results JSON."""
    from tqdm.auto import tqdm

    from sam3_lora.data.results import prediction_entries
    from sam3_lora.serve.prompts import check_threshold

    check_threshold(args.threshold, option="threshold")   # all checked before the model loads
    if args.onnx:
        check_onnx_flags(args)
    images = find_images(args.image)
    pairs = output_paths(images, args.output)
    boxes, negative = parse_boxes(args.bboxes, "--bboxes"), parse_boxes(args.negative_bboxes, "--negative-bboxes")
    if not args.prompt and boxes is None:
        raise PredictInputError("no prompt: give --prompt text, --bboxes, or both")
    if args.onnx:
        from sam3_lora.serve.onnx_engine import SAM3OnnxInference

        engine = SAM3OnnxInference(args.onnx, detection_threshold=args.threshold)
    else:
        from sam3_lora.serve.inference import SAM3LoRAInference

        engine = SAM3LoRAInference(config=config_from_args(args), weights_path=args.weights, no_lora=args.no_lora,
                                   detection_threshold=args.threshold, resolution=args.resolution)
    for image_id, (image, (png, js)) in enumerate(tqdm(list(zip(images, pairs, strict=True)), desc="predict",
                                                       disable=len(images) == 1)):
        predictions = engine.predict(image, args.prompt, boxes, negative)
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            engine.visualize(predictions, png, show_boxes=not args.no_boxes, show_masks=not args.no_masks)
            write_file(js, json.dumps(prediction_entries(predictions, image_id)))
        except OSError as error:   # a full disk, a folder removed meanwhile
            raise PredictInputError(f"--output {png.parent}: cannot be written ({error.strerror}); "
                                    "choose another place") from None
        counts = ", ".join(f"{p['prompt']} {p['num_detections']}" for p in predictions)
        tqdm.write(f"{image.name}: {counts} -> {png}")   # above the progress bar, not through it
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``predict``."""
    predict = add_command(commands, "predict", cmd_predict, "segment images with text and box prompts",
                          epilog=PREDICT_EPILOG)
    predict.add_argument("--weights", metavar="DIR", help="adapter folder (default: output.dir/best)")
    predict.add_argument("--no-lora", action="store_true", help="the base model, no adapter")
    predict.add_argument("--onnx", metavar="DIR", help="run an ONNX export (sam3-lora export --onnx) on "
                         "onnxruntime instead; --config and --weights are then not needed")
    predict.add_argument("--image", required=True, metavar="PATH", help="an image, a folder of images, or a glob")
    predict.add_argument("--prompt", nargs="+", default=[], metavar="TEXT", help="one or more text prompts")
    predict.add_argument("--bboxes", metavar="JSON", help="positive box exemplars '[[x1,y1,x2,y2], ...]' in pixels")
    predict.add_argument("--negative-bboxes", metavar="JSON", help="negative box exemplars, same form")
    predict.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    predict.add_argument("--resolution", type=int, metavar="PX", help="model input size (multiple of 14)")
    predict.add_argument("--no-boxes", action="store_true", help="do not draw boxes")
    predict.add_argument("--no-masks", action="store_true", help="do not draw masks")
    predict.add_argument("--output", default="predictions", metavar="PATH",
                         help="a .png for one image, else a folder (default: predictions/)")
