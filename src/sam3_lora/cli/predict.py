"""``sam3-lora predict``: a thin layer over ``serve.inference`` (``serve.onnx_engine`` with ``--onnx``,
which imports no torch)."""

from __future__ import annotations

import argparse
import json
import sys

from sam3_lora.cli.common import add_command, config_from_args
from sam3_lora.config import DEFAULT_SCORE_THRESHOLD, LEGACY_FLAGS
from sam3_lora.files import write_file
from sam3_lora.serve.image_files import (
    PredictInputError,
    find_images,
    output_paths,
    readable_images,
    skipped_line,
)
from sam3_lora.serve.prompts import parse_json_boxes, parse_points

PREDICT_EPILOG = """\
examples:
  sam3-lora predict --config runs/cracks/config.yaml --image wall.jpg --prompt "concrete crack"
  sam3-lora predict --config runs/cracks/config.yaml --image photos/ --prompt crack spalling --output out/
  sam3-lora predict --config balanced --no-lora --image shelf.png --bboxes '[[10, 20, 200, 180]]'
  sam3-lora predict --onnx cracks-onnx --image wall.jpg --prompt "concrete crack"   # onnxruntime, no torch
  sam3-lora predict --config tracker.yaml --image wall.jpg --points 120,80 300,40,0   # model.task: interactive
  sam3-lora predict --onnx clicks-onnx --image wall.jpg --points 120,80   # a tracker export, no torch

writes, per image NAME: NAME.png (overlay: a colour per prompt, scores, legend) and NAME.json,
COCO results (image_id = the image's index, category_id = the prompt's index + 1, with
"prompt" and "box_xyxy"; masks as RLE) that `sam3-lora evaluate` reads. An image that cannot
be read is skipped, and the skipped ones are counted at the end (--strict: stop at it instead).
"""

def check_onnx_flags(args: argparse.Namespace) -> None:
    """With --onnx the export folder is the whole model: the flags that choose a model or
    its input size cannot apply, and saying so beats ignoring them."""
    given = [flag for flag, value in (("--config", args.config), ("--weights", args.weights),
                                      ("--no-lora", args.no_lora), ("--task", args.task),
                                      ("--resolution", args.resolution),
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
    boxes = parse_json_boxes(args.bboxes, "--bboxes")
    negative = parse_json_boxes(args.negative_bboxes, "--negative-bboxes")
    points, labels = parse_points(args.points, option="points")
    if not args.prompt and boxes is None and points is None:
        raise PredictInputError("no prompt: give --prompt text, --bboxes, or both (--points with the tracker)")
    if args.onnx:
        from sam3_lora.serve.onnx_engine import read_export

        tracker = read_export(args.onnx).get("task", "concept") == "interactive"
        if points is not None and not tracker:   # before the graphs load
            raise PredictInputError(f"--points needs SAM3's tracker: {args.onnx} is a concept export; export a run "
                                    f"with model.task=interactive, or drop --points")
        engine = _onnx_engine(args.onnx, tracker, args.threshold)
    else:
        from sam3_lora.serve.inference import SAM3LoRAInference

        config = config_from_args(args)
        tracker = config.model.task == "interactive"
        if points is not None and not tracker:   # before the model loads
            raise PredictInputError("--points needs SAM3's tracker: a config with model.task=interactive")
        engine = SAM3LoRAInference(config=config, weights_path=args.weights, no_lora=args.no_lora, task=args.task,
                                   detection_threshold=args.threshold, resolution=args.resolution)
    outputs = dict(zip(images, pairs, strict=True))
    skipped = []
    with tqdm(total=len(images), desc="predict", disable=len(images) == 1) as progress:
        for image_id, image, picture in readable_images(images, skipped, strict=args.strict):
            png, js = outputs[image]
            predictions = (_segment(engine, picture, args.prompt, boxes, negative, points, labels)
                           if tracker
                           else engine.predict(picture, args.prompt, boxes, negative))
            try:
                png.parent.mkdir(parents=True, exist_ok=True)
                engine.visualize(predictions, png, show_boxes=not args.no_boxes, show_masks=not args.no_masks)
                write_file(js, json.dumps(prediction_entries(predictions, image_id)))
            except OSError as error:   # a full disk, a folder removed meanwhile
                raise PredictInputError(f"--output {png.parent}: cannot be written ({error.strerror}); "
                                        "choose another place") from None
            counts = ", ".join(f"{p['prompt']} {p['num_detections']}" for p in predictions)
            progress.write(f"{image.name}: {counts} -> {png}")   # above the progress bar, not through it
            progress.update(image_id + 1 - progress.n)
        progress.update(len(images) - progress.n)
    warning = skipped_line(skipped)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _onnx_engine(folder: str, tracker: bool, threshold: float):
    """The onnxruntime engine for the export in ``folder``: the tracker's or the concept model's."""
    if tracker:
        from sam3_lora.serve.onnx_tracker import SAM3OnnxTracker

        return SAM3OnnxTracker(folder)
    from sam3_lora.serve.onnx_engine import SAM3OnnxInference

    return SAM3OnnxInference(folder, detection_threshold=threshold)


def _segment(engine, picture, prompts, boxes, negative, points, labels) -> list[dict]:
    """``model.task: interactive``: one object from --points and / or one --bboxes box, in
    ``predict``'s form; text and negative boxes do not apply to the tracker."""
    if prompts or negative is not None or (boxes is not None and len(boxes) > 1):
        raise PredictInputError("the tracker (model.task=interactive) takes --points and at most one box in "
                                "--bboxes, not --prompt or --negative-bboxes")
    # serve.prompts, not serve.tracker: torch-free, as the ONNX tracker runs without torch
    from sam3_lora.serve.prompts import as_prediction

    box = boxes[0] if boxes is not None and len(boxes) else None
    return [as_prediction(engine.segment(picture, points, labels, box))]


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``predict``."""
    predict = add_command(commands, "predict", cmd_predict, "segment images with text and box prompts",
                          epilog=PREDICT_EPILOG)
    predict.add_argument("--weights", metavar="DIR", help="adapter folder (default: output.dir/best)")
    predict.add_argument("--no-lora", action="store_true", help="the base model, no adapter")
    predict.add_argument("--task", metavar="NAME", help="with data.datasets: whose adapters to use "
                         "(lora.task_adapters)")
    predict.add_argument("--onnx", metavar="DIR", help="run an ONNX export (sam3-lora export --onnx) on "
                         "onnxruntime instead; --config and --weights are then not needed")
    predict.add_argument("--image", required=True, metavar="PATH", help="an image, a folder of images, or a glob")
    predict.add_argument("--prompt", nargs="+", default=[], metavar="TEXT", help="one or more text prompts")
    predict.add_argument("--bboxes", metavar="JSON", help="positive box exemplars '[[x1,y1,x2,y2], ...]' in pixels")
    predict.add_argument("--negative-bboxes", metavar="JSON", help="negative box exemplars, same form")
    predict.add_argument("--points", nargs="+", metavar="X,Y[,LABEL]", help="clicks on one object, in pixels "
                         "(LABEL 1 object, the default, or 0 not it); needs model.task=interactive")
    predict.add_argument("--threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                         help=f"minimum score (default {DEFAULT_SCORE_THRESHOLD:g})")
    predict.add_argument("--resolution", type=int, metavar="PX", help="model input size (multiple of 14)")
    predict.add_argument("--no-boxes", action="store_true", help="do not draw boxes")
    predict.add_argument("--no-masks", action="store_true", help="do not draw masks")
    predict.add_argument("--strict", action="store_true", help="stop at the first unreadable image "
                         "(default: skip it, and count the skipped ones at the end)")
    predict.add_argument("--output", default="predictions", metavar="PATH",
                         help="a .png for one image, else a folder (default: predictions/)")
