"""``sam3-lora evaluate``: COCO mAP and SAM3's cgF1 of a predictions file, no model needed.

``add_parser(subparsers)`` registers the command on the main parser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sam3_lora.cli.common import add_command
from sam3_lora.config import DEFAULT_SCORE_THRESHOLD
from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import check_output

EVALUATE_EPILOG = """\
examples:
  sam3-lora evaluate --gt data/cracks/valid/_annotations.coco.json \\
      --predictions runs/cracks/eval-valid/predictions.json --output metrics.json
  sam3-lora evaluate --gt gt.json --predictions boxes.json --iou-type bbox

predictions: COCO results, a JSON list of
  {"image_id": 1, "category_id": 2, "score": 0.93,
   "segmentation": {"size": [h, w], "counts": "..."}}
  (RLE masks as pycocotools.mask.encode writes them, counts as str; or "bbox": [x, y, w, h]).
  Scores must be probabilities in [0, 1]; ids must be those of the GT file.

metrics: mAP, mAP50, mAP75 (pycocotools COCOeval, all scores ranked); cgF1 = pmF1 x IL_MCC
  (SAM3's, predictions with score >= --score-threshold, per (image, category) unit; a category
  absent from an image is a negative unit). cgF1 is n/a (null) when the GT has no negative units.
"""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate``; returns its parser."""
    parser = add_command(commands, "evaluate", cmd_evaluate,
                         "score a COCO predictions file: mAP and SAM3's cgF1 (no model needed)",
                         epilog=EVALUATE_EPILOG, config=False)
    parser.add_argument("--gt", required=True, metavar="GT.json",
                        help="COCO ground truth (images, categories, annotations)")
    parser.add_argument("--predictions", required=True, metavar="PRED.json",
                        help="COCO results: a list of {image_id, category_id, score, "
                             "segmentation|bbox}")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm",
                        help="match masks (segm) or boxes (bbox) (default: segm)")
    parser.add_argument("--output", metavar="metrics.json", default=None,
                        help="also write the metrics as one flat JSON object here")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, metavar="S",
                        help=f"cgF1 counts predictions scoring at least this (default: {DEFAULT_SCORE_THRESHOLD:g}, "
                             "SAM3's); mAP uses every score")
    parser.add_argument("--compare-base", metavar="BASE.json", default=None,
                        help="the base model's predictions on the same images: scored too and "
                             "shown side by side, per category")
    return parser


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score COCO results against COCO ground truth: COCO mAP (pycocotools) and SAM3's cgF1
    family; prints a table, optionally writes the metrics as JSON. With --compare-base the
    base model's predictions are scored too and shown side by side."""
    # Imported here so that building the CLI does not load pycocotools and scipy.
    from sam3_lora.evaluation.metrics import evaluate_files, format_table

    if args.output:   # before any work: a folder there, or no right to write, is said first
        check_output(args.output, folder=False, what="--output")
    metrics = evaluate_files(args.gt, args.predictions, iou_type=args.iou_type, score_threshold=args.score_threshold)
    base = None
    if args.compare_base:
        base = evaluate_files(args.gt, args.compare_base, iou_type=args.iou_type,
                              score_threshold=args.score_threshold)
        metrics["base"] = base
    print(f"{args.iou_type} metrics of {args.predictions} against {args.gt} "
          f"(cgF1 counts scores >= {args.score_threshold:g}):")
    print(format_table(metrics, base))
    if args.output:
        path = Path(args.output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        except OSError as error:   # a full disk, a folder removed meanwhile
            raise Sam3LoraError(f"--output {path}: cannot be written ({error.strerror}); "
                                "choose another place") from None
        print(f"wrote {path}")
    return 0
