"""``sam3-lora data ...``: create, synthesize, convert and validate datasets.

``add_parser(subparsers)`` registers the ``data`` command on the main parser. Every
leaf command sets ``func(args) -> exit code``, prints one line saying what it wrote, and
raises ``Sam3LoraError`` for user errors (the main CLI prints them).
"""

from __future__ import annotations

import argparse
import os

from sam3_lora.cli.common import HelpFormatter
from sam3_lora.data.scaffold import ANNOTATION_FILE

DATA_EPILOG = """\
examples:
  sam3-lora data create data/mine                 empty layout + README to fill in
  sam3-lora data synth data/shapes                synthetic coloured shapes, all splits
  sam3-lora data convert yolo my_yolo data/mine   YOLO boxes/polygons -> COCO layout
  sam3-lora data validate data/mine               check before training

layout: DIR/train, DIR/valid, DIR/test, each with images + _annotations.coco.json
video:  DIR/SPLIT/JPEGImages/SEQ/*.jpg + DIR/SPLIT/Annotations/SEQ/*.png (DAVIS), e.g.
        from `sam3-lora data synth data/clips --video`
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` with its subcommands to the main parser's ``subparsers``."""
    data = subparsers.add_parser(
        "data", help="create, synthesize, convert and validate datasets",
        description="Datasets in the train/valid/test COCO layout sam3-lora trains on.",
        epilog=DATA_EPILOG, formatter_class=HelpFormatter,
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_create(commands)
    _add_synth(commands)
    _add_convert(commands)
    _add_validate(commands)
    return data


def _leaf(commands, name: str, help: str, epilog: str, func) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                 epilog=epilog, formatter_class=HelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _add_create(commands) -> None:
    parser = _leaf(commands, "create", "write an empty dataset layout with a README",
                   "example:\n  sam3-lora data create data/mine", cmd_create)
    parser.add_argument("dir", metavar="DIR", help="new or empty folder to create it in")


def cmd_create(args: argparse.Namespace) -> int:
    from sam3_lora.data.scaffold import create_layout

    print(create_layout(args.dir))
    return 0


IMAGE_DEFAULTS = {"train": 24, "valid": 8, "test": 8, "size": 224, "objects": (1, 5),
                  "radius": (0.08, 0.25)}
"""``data synth``'s defaults for images (``data.synth.synthesize``'s own)."""


def _video_defaults() -> dict:
    """``data synth --video``'s defaults: ``data.video.synth``'s own."""
    from sam3_lora.data.video import synth

    return {**synth.DEFAULT_SEQUENCES, "size": synth.DEFAULT_SIZE,
            "objects": synth.DEFAULT_OBJECTS, "radius": synth.DEFAULT_RADIUS}


def _add_synth(commands) -> None:
    from sam3_lora.data.synth import BACKGROUNDS, COLORS, SHAPES

    video = _video_defaults()
    parser = _leaf(
        commands, "synth", "generate a synthetic dataset of coloured shapes (images or clips)",
        "examples:\n"
        "  sam3-lora data synth data/shapes\n"
        "  sam3-lora data synth data/target --shapes star hexagon cross --background stripes\n"
        "  sam3-lora data synth data/big --train 500 --valid 100 --test 100 --size 320\n"
        "  sam3-lora data synth data/clips --video --frames 16 --train 20   # DAVIS layout\n"
        "categories are '<colour> <shape>', e.g. 'red circle'; same seed, same bytes\n"
        "--video: moving shapes (bounces, occlusion, one entering and leaving, an\n"
        "unannotated look-alike, colour and size drift); per split JPEGImages/,\n"
        "Annotations/ (palette PNGs) and meta.json naming each object's concept",
        cmd_synth,
    )
    parser.add_argument("dir", metavar="DIR", help="new or empty output folder")
    parser.add_argument("--video", action="store_true",
                        help="write clips in the DAVIS layout instead of COCO images")
    parser.add_argument("--frames", type=int, default=12, metavar="N",
                        help="frames per clip (with --video)")
    parser.add_argument("--shapes", nargs="+", default=["circle", "square", "triangle"],
                        choices=sorted(SHAPES), metavar="SHAPE",
                        help=f"shapes to draw, from: {', '.join(SHAPES)}")
    parser.add_argument("--colors", nargs="+", default=["red", "green", "blue"],
                        choices=sorted(COLORS), metavar="COLOR",
                        help=f"colours to draw, from: {', '.join(COLORS)}")
    parser.add_argument("--concepts", nargs="+", default=None, metavar="CONCEPT",
                        help="exact categories instead of every colour x shape, "
                        "e.g. 'red circle' 'blue star'")
    parser.add_argument("--background", nargs="+", default=["plain"], choices=sorted(BACKGROUNDS),
                        metavar="STYLE",
                        help=f"background styles, one drawn per image: {', '.join(BACKGROUNDS)}")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}", type=int, default=None, metavar="N",
                            help=f"images in {split}/ (default {IMAGE_DEFAULTS[split]}), or "
                            f"clips with --video (default {video[split]}); 0 leaves the "
                            "split out")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help=f"image side in pixels, square (default {IMAGE_DEFAULTS['size']}; "
                        f"{video['size']} with --video)")
    parser.add_argument("--max-size", type=int, default=None, metavar="PX",
                        help="draw each image's (clip's) width and height from SIZE..MAX_SIZE")
    parser.add_argument("--objects", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="objects drawn per image, before dropping hidden ones (default "
                        f"{_pair(IMAGE_DEFAULTS['objects'])}); annotated objects per clip with "
                        f"--video (default {_pair(video['objects'])})")
    parser.add_argument("--radius", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="shape circumradius as a fraction of the image's shorter side "
                        f"(default {_pair(IMAGE_DEFAULTS['radius'])}; {_pair(video['radius'])} "
                        "with --video, on a clip's first frame)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def _pair(values) -> str:
    return " ".join(f"{value:g}" for value in values)


def cmd_synth(args: argparse.Namespace) -> int:
    from sam3_lora.data.synth import synthesize
    from sam3_lora.data.video.synth import synthesize_video

    defaults = _video_defaults() if args.video else IMAGE_DEFAULTS
    given = {key: default if (value := getattr(args, key)) is None else value
             for key, default in defaults.items()}
    counts = {s: n for s in ("train", "valid", "test") if (n := given[s]) > 0}
    size = given["size"] if args.max_size is None else ((given["size"],) * 2,
                                                        (args.max_size,) * 2)
    common = {"shapes": args.shapes, "colors": args.colors, "concepts": args.concepts,
              "background": args.background, "image_size": size, "seed": args.seed,
              "radius_range": tuple(given["radius"])}
    if args.video:
        summary = synthesize_video(args.dir, sequences_per_split=counts, frames=args.frames,
                                   objects_per_clip=tuple(given["objects"]), **common)
    else:
        summary = synthesize(args.dir, images_per_split=counts,
                             objects_per_image=tuple(given["objects"]), **common)
    print(summary)
    return 0


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-ratios", type=float, nargs=3, default=None,
                        metavar=("TRAIN", "VALID", "TEST"),
                        help="shuffle all images and split them by these ratios (sum 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    parser.add_argument("--copy", action="store_true",
                        help="copy images instead of hard-linking them when possible")


def _add_convert(commands) -> None:
    convert = commands.add_parser(
        "convert", help="convert YOLO, LabelMe or COCO labels into the layout",
        description="Convert labels into the train/valid/test COCO layout, in a new folder. "
        "Input files are only read; images are hard-linked when possible, else copied.",
        epilog="examples:\n"
        "  sam3-lora data convert yolo my_yolo data/mine\n"
        "  sam3-lora data convert labelme photos/ data/mine --split-ratios 0.8 0.1 0.1\n"
        "  sam3-lora data convert coco instances.json images/ data/mine --split valid\n"
        "  sam3-lora data convert split export/train data/mine --seed 1",
        formatter_class=HelpFormatter,
    )
    formats = convert.add_subparsers(dest="convert_format", metavar="FORMAT", required=True)

    yolo = _leaf(
        formats, "yolo", "YOLO detection or segmentation labels (Ultralytics or Roboflow)",
        "folders: images/{train,val,test} + labels/{...} or {train,valid,test}/{images,labels}\n"
        "lines: 'class cx cy w h' (box-only object) or 'class x1 y1 x2 y2 ...' (polygon),\n"
        "normalised 0..1; class names from data.yaml, classes.txt or obj.names\n"
        "example:\n  sam3-lora data convert yolo my_yolo data/mine --names my_yolo/data.yaml",
        cmd_convert_yolo,
    )
    yolo.add_argument("source", metavar="SRC", help="YOLO dataset folder")
    yolo.add_argument("out", metavar="OUT", help="new or empty output folder")
    yolo.add_argument("--names", default=None, metavar="FILE",
                      help="data.yaml or class-list file (default: found in SRC)")
    _add_split_options(yolo)

    labelme = _leaf(
        formats, "labelme", "LabelMe per-image JSON (polygon, rectangle, circle, mask shapes)",
        "SRC holds images with a .json beside each; rectangles become box-only objects\n"
        "example:\n  sam3-lora data convert labelme photos/ data/mine --split-ratios 0.8 0.1 0.1",
        cmd_convert_labelme,
    )
    labelme.add_argument("source", metavar="SRC", help="folder of images and LabelMe JSON files")
    labelme.add_argument("out", metavar="OUT", help="new or empty output folder")
    _add_split_options(labelme)

    coco = _leaf(
        formats, "coco", "one COCO file plus its image folder",
        "without --split-ratios everything goes to --split (train)\n"
        "example:\n  sam3-lora data convert coco ann.json images/ data/mine "
        "--split-ratios 0.8 0.1 0.1",
        cmd_convert_coco,
    )
    coco.add_argument("annotation_file", metavar="ANN.json", help="COCO annotation file")
    coco.add_argument("images_dir", metavar="IMAGES_DIR", help="folder holding its images")
    coco.add_argument("out", metavar="OUT", help="new or empty output folder")
    coco.add_argument("--split", default="train", choices=["train", "valid", "test"],
                      help="split to put everything in when not splitting by ratios")
    _add_split_options(coco)

    split = _leaf(
        formats, "split", "split one COCO split folder into train/valid/test",
        "ids are kept; the same seed gives the same split; ratios default to 0.8 0.1 0.1\n"
        "examples:\n  sam3-lora data convert split export/train data/mine --split-ratios 0.7 0.2 0.1\n"
        "  sam3-lora data convert split export/train data/mine --keep-test   "
        "# valid from train, export/test kept",
        cmd_convert_split,
    )
    split.add_argument("source", metavar="SRC",
                       help="folder with the annotation file and its images, or the file itself")
    split.add_argument("out", metavar="OUT", help="new or empty output folder")
    split.add_argument("--annotation-file", default=ANNOTATION_FILE, metavar="NAME",
                       help="annotation file name inside SRC")
    _add_split_options(split)
    split.add_argument("--keep-test", action="store_true",
                       help="keep the test/ beside SRC as it is and cut SRC into train/valid "
                       "only (ratios default to 0.9 0.1 0; the test ratio must be 0)")


def _ratios(args: argparse.Namespace):
    return tuple(args.split_ratios) if args.split_ratios is not None else None


def cmd_convert_yolo(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.yolo import convert_yolo

    print(convert_yolo(args.source, args.out, names=args.names, split_ratios=_ratios(args),
                       seed=args.seed, link=not args.copy))
    return 0


def cmd_convert_labelme(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.labelme import convert_labelme

    print(convert_labelme(args.source, args.out, split_ratios=_ratios(args), seed=args.seed,
                          link=not args.copy))
    return 0


def cmd_convert_coco(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.coco import convert_coco

    print(convert_coco(args.annotation_file, args.images_dir, args.out,
                       split_ratios=_ratios(args), seed=args.seed, split=args.split,
                       link=not args.copy))
    return 0


def cmd_convert_split(args: argparse.Namespace) -> int:
    from sam3_lora.data.convert.coco import split_coco

    print(split_coco(args.source, args.out, ratios=_ratios(args), seed=args.seed,
                     annotation_file=args.annotation_file, link=not args.copy,
                     keep_test=args.keep_test))
    return 0


def _add_validate(commands) -> None:
    parser = _leaf(
        commands, "validate", "check a dataset and report every problem with its fix",
        "exit status 0 when no errors are found, 1 when there are\n"
        "a folder holding JPEGImages/ and Annotations/ (itself or in train/, valid/, test/)\n"
        "is checked as a DAVIS / YouTube-VOS video dataset\n"
        "examples:\n  sam3-lora data validate data/mine\n"
        "  sam3-lora data validate DAVIS --sequences DAVIS/ImageSets/2017/val.txt\n"
        "  sam3-lora data validate ytvos/valid --protocol youtube-vos\n"
        "  sam3-lora data validate ytvis/train/instances.json   # YouTube-VIS, frames in\n"
        "                                                       # JPEGImages/ beside it",
        cmd_validate,
    )
    parser.add_argument("dir", metavar="DIR", help="dataset root holding train/ (valid/, "
                        "test/), or a YouTube-VIS .json file")
    parser.add_argument("--annotation-file", default=ANNOTATION_FILE, metavar="NAME",
                        help="annotation file name inside each split folder")
    parser.add_argument("--frames-dir", default=None, metavar="DIR",
                        help="YouTube-VIS: the folder its file_names are relative to "
                        "(default: JPEGImages/ beside the file)")
    parser.add_argument("--sequences", default=None, metavar="FILE",
                        help="video: a text file naming the sequences to check, one a line "
                        "(default: every sequence folder)")
    parser.add_argument("--protocol", default="davis", choices=["davis", "youtube-vos"],
                        help="video: davis wants every object on the first annotated frame and "
                        "a mask on every later frame; youtube-vos lets objects appear later "
                        "and frames go without masks")


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem of the dataset; exit status 1 when there are errors."""
    from sam3_lora.data.video.checks import is_video_dataset

    if args.dir.lower().endswith(".json") and os.path.isfile(args.dir):
        from sam3_lora.data.video.checks import format_video_report, validate_vis_file

        report = validate_vis_file(args.dir, args.frames_dir)
        print(format_video_report(report))
        return report.exit_code
    if is_video_dataset(args.dir):
        from sam3_lora.data.video.checks import format_video_report, validate_video_dataset

        report = validate_video_dataset(args.dir, image_set=args.sequences,
                                        protocol=args.protocol)
        print(format_video_report(report))
        return report.exit_code
    from sam3_lora.data.checks import format_report, validate_dataset

    report = validate_dataset(args.dir, args.annotation_file)
    print(format_report(report))
    return report.exit_code
