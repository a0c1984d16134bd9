"""Store a trained tracker as the bundled base's (``sam3-tiny-shapes/tracker/``), in float16.

Half the bytes of float32; ``load_tracker`` reads them back as float32 (mask logits within
0.01 of the float32 weights' on the base's shapes). How the shipped one was trained:
``configs/base-tracker.yaml``.

    python bench/ship_tracker.py runs/base-tracker/last
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sam3_lora.files import apply_umask
from sam3_lora.model.loading import BUNDLED
from sam3_lora.model.tracker import BUNDLED_TRACKER, load_tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a trained tracker's folder (a run's best/ or last/)")
    args = parser.parse_args()
    folder = Path(BUNDLED["sam3-tiny-shapes"]) / BUNDLED_TRACKER
    load_tracker(args.weights).model.half().save_pretrained(folder)
    apply_umask(folder)   # transformers writes 0600 files: the package's data must be readable by all
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
