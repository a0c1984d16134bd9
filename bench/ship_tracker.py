"""Store a trained tracker as the bundled base's, in float16: an image tracker as
``sam3-tiny-shapes/tracker/``, a video tracker (``--video``) as ``video-tracker/``.

Half the bytes of float32; the loaders read them back as float32 (mask logits within 0.01 of
the float32 weights' on the base's shapes). How the shipped ones were trained:
``configs/base-tracker.yaml`` and ``configs/base-video-tracker.yaml``.

    python bench/ship_tracker.py runs/base-tracker/last
    python bench/ship_tracker.py --video runs/base-video-tracker/last
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sam3_lora.files import apply_umask
from sam3_lora.model.loading import BUNDLED
from sam3_lora.model.tracker import BUNDLED_TRACKER, load_tracker
from sam3_lora.model.video import BUNDLED_VIDEO_TRACKER, load_video_tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a trained tracker's folder (a run's best/ or last/)")
    parser.add_argument("--video", action="store_true", help="a video tracker (a model.task=video run's)")
    args = parser.parse_args()
    folder = Path(BUNDLED["sam3-tiny-shapes"]) / (BUNDLED_VIDEO_TRACKER if args.video else BUNDLED_TRACKER)
    load = load_video_tracker if args.video else load_tracker
    load(args.weights).model.half().save_pretrained(folder)
    apply_umask(folder)   # transformers writes 0600 files: the package's data must be readable by all
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
