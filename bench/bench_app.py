"""What one request to ``sam3-lora app`` costs at the edge of its budget: peak memory and time.

Runs ``AdapterApp.predict`` (base model, no adapter) on a random image of SIDE x SIDE pixels
with PROMPTS prompts at THRESHOLD, then writes its downloads as the page does, and prints the
growth of the process's peak RSS over a warm-up request on a tiny image. Threshold 0 keeps
every proposal up to the app's ``MAX_DETECTIONS`` per prompt: the worst case the budget
(``serve.limits.MAX_PROMPT_PIXELS``, prompts x pixels) is meant to bound.

    python bench/bench_app.py [--model sam3-tiny-shapes] [--side 5000] [--prompts 4] [--threshold 0]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
from machine import machine  # bench/machine.py (scripts run from bench/)
from PIL import Image

from sam3_lora.config import load_config
from sam3_lora.serve.app import BASE, AdapterApp
from sam3_lora.serve.limits import MAX_DETECTIONS, MAX_PROMPT_PIXELS

CONCEPTS = ["red circle", "blue square", "green triangle", "yellow circle"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3-tiny-shapes", help="model.source")
    parser.add_argument("--side", type=int, default=5000, help="image side in pixels (square)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = AdapterApp(load_config(None, [f"model.source={args.model}", f"output.dir={tmp}/run"]))
        image = Image.fromarray((np.random.default_rng(0).random((args.side, args.side, 3)) * 255)
                                .astype(np.uint8))
        prompts = ", ".join(f"{CONCEPTS[i % len(CONCEPTS)]} {i}" for i in range(args.prompts))
        app.predict(image.resize((64, 64)), prompts, "", 0.5, BASE)   # warm-up: the model's own memory
        before = peak_mb()
        start = time.perf_counter()
        result = app.predict(image, prompts, "", args.threshold, BASE)
        result.save(f"{tmp}/downloads")
        seconds = time.perf_counter() - start
    megapixels = args.side ** 2 / 1e6
    print(f"{machine()}\n{args.model}: {args.prompts} prompts on {args.side}x{args.side} "
          f"({megapixels:.1f} MP, {args.prompts * megapixels:.0f} of the {MAX_PROMPT_PIXELS / 1e6:g} "
          f"MP-prompt budget), threshold {args.threshold:g}: {len(result.rows())} detections "
          f"(at most {MAX_DETECTIONS} per prompt), peak RSS +{peak_mb() - before:.0f} MB over "
          f"{before:.0f} MB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
