"""``sam3-lora track``: a thin layer over ``serve.video`` (through ``SAM3LoRAInference.track``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam3_lora.cli.common import add_command, config_from_args
from sam3_lora.data.scaffold import check_output_dir
from sam3_lora.files import atomic_folder, check_output
from sam3_lora.serve.prompts import parse_json_boxes, parse_points

TRACK_EPILOG = """\
examples:
  sam3-lora track --config runs/cracks/config.yaml --video wall.mp4 --prompt "concrete crack" --output tracks/
  sam3-lora track --config runs/cells-tracker/config.yaml --video frames/ --points 120,80 300,40,0 --frame 10 \\
      --output cell/
  sam3-lora track --config tracker.yaml --video clip.mp4 --bboxes '[[10, 20, 80, 90], [100, 20, 160, 90]]' \\
      --output two/ --png

writes into the new or empty folder OUTPUT: overlay.mp4 (each object in its identity's colour),
masklets.json (YouTube-VIS results: per object its per-frame RLE or null, score, prompt,
category_id = the prompt's index + 1, object_id) and with --png masks/NAME.png (DAVIS index
masks: pixel value = object id) and overlays/NAME.png. Clicks (--points) are one object, with
at most one box; boxes alone are one object each. Reading a video file and writing the
overlay video need PyAV (pip install 'sam3-lora[video]'); a folder of frames with --no-video
needs nothing more.
"""


def cmd_track(args: argparse.Namespace) -> int:
    """Follow concepts (--prompt) or clicked objects (--points, --bboxes) through a video: an
    overlay video, YouTube-VIS masklets and, with --png, per-frame PNGs."""
    from tqdm.auto import tqdm

    from sam3_lora.model.video import check_video_source
    from sam3_lora.serve.video import (
        TrackWriter,
        check_adapter_task,
        check_request,
        open_video,
        require_pyav,
    )

    points, labels = parse_points(args.points, option="points")
    boxes = parse_json_boxes(args.boxes, "--bboxes")
    source = open_video(args.video, args.fps)
    config = config_from_args(args)
    check_request(config.model.task, source, args.prompts, points, labels, boxes, args.frame)  # before the model loads
    check_video_source(config.model.source, config.model.task == "concept", config.model.revision,
                       width=config.model.tracker_width)
    if not args.no_lora:
        check_adapter_task(args.weights or Path(config.output.dir) / "best", config.model.task)
    if not args.no_video:
        require_pyav("writing the overlay video (or give --no-video)")
    out = check_output(check_output_dir(args.output), folder=True, what="output")

    from sam3_lora.serve.inference import SAM3LoRAInference

    engine = SAM3LoRAInference(config=config, weights_path=args.weights, no_lora=args.no_lora, task=args.task,
                               resolution=args.resolution)
    frames = engine.track(source, args.prompts, points, labels, boxes, args.frame)
    with atomic_folder(out) as staging:   # a run stopped half-way leaves no half-written folder
        writer = TrackWriter(staging, len(source), source.fps, video=not args.no_video, png=args.png)
        for frame in tqdm(frames, total=len(source), desc="track", unit="frame"):
            writer.add(frame)
        writer.close()
    masklets = writer.masklets()
    print(f"{len(source)} frames, {len(masklets)} object{'s' * (len(masklets) != 1)} -> {out}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``track``."""
    track = add_command(commands, "track", cmd_track, "follow concepts or clicked objects through a video",
                        epilog=TRACK_EPILOG)
    track.add_argument("--video", required=True, metavar="PATH", help="a video file or a folder of frames")
    track.add_argument("--prompt", dest="prompts", nargs="+", default=[], metavar="TEXT",
                       help="concepts to track (model.task=concept)")
    track.add_argument("--points", nargs="+", metavar="X,Y[,LABEL]", help="clicks on one object on --frame, in "
                       "pixels (LABEL 1 object, the default, or 0 not it); the tracker (model.task=interactive)")
    track.add_argument("--bboxes", dest="boxes", metavar="JSON", help="boxes '[[x1,y1,x2,y2], ...]' in pixels of "
                       "--frame: one object each (one box with --points: the same object)")
    track.add_argument("--frame", type=int, default=0, metavar="K", help="the frame the clicks and boxes are on "
                       "(default 0); frames before it are tracked backwards")
    track.add_argument("--weights", metavar="DIR", help="adapter folder (default: output.dir/best)")
    track.add_argument("--no-lora", action="store_true", help="the base model, no adapter")
    track.add_argument("--task", metavar="NAME", help="with data.datasets: whose adapters to use "
                       "(lora.task_adapters)")
    track.add_argument("--resolution", type=int, metavar="PX", help="model input size (multiple of 14)")
    track.add_argument("--fps", type=float, metavar="F", help="frame rate of the overlay video made from a folder "
                       "of frames (default 24; a video file keeps its own)")
    track.add_argument("--png", action="store_true", help="also write per-frame PNGs: masks/ (index masks) and "
                       "overlays/")
    track.add_argument("--no-video", action="store_true", help="no overlay video (needs no PyAV with a folder)")
    track.add_argument("--output", required=True, metavar="DIR", help="a new or empty folder for the results")
