"""Prediction latency: K prompts on one image at the price of one image encoding.

"shared" is ``SAM3LoRAInference.predict``: the vision encoder once, text features cached
across images, K rows of the heads in one call, then post-processing. "per-prompt loop" runs
the whole model once per prompt (image re-encoded, text re-encoded), as a naive tool does.
Both include post-processing. Times are the median of ``--repeats`` runs after a warm-up.

Usage: python bench/bench_predict.py [--model sam3] [--image-size 336] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from machine import machine  # bench/machine.py (scripts run from bench/)

from sam3_lora.config import load_config
from sam3_lora.model.postprocess import postprocess
from sam3_lora.serve.inference import SAM3LoRAInference

COUNTS = (1, 4, 16)


def timed(fn, repeats: int) -> float:
    fn()   # warm-up (and fills the text cache of the shared path)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def per_prompt_loop(engine: SAM3LoRAInference, image, prompts: list[str]) -> None:
    pixels = engine.processor.images([image])
    for prompt in prompts:
        outputs = engine.model(pixel_values=pixels, **engine.processor.text([prompt]))
        postprocess(outputs, [(image.height, image.width)], engine.threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3")
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config(None, [f"model.source={args.model}", f"model.image_size={args.image_size}"])
    engine = SAM3LoRAInference(config=config, no_lora=True, detection_threshold=0.5)
    image = __import__("PIL.Image", fromlist=["Image"]).fromarray(
        (np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8"))
    print(f"{args.model} at {engine.processor.image_size} px, CPU, no_grad; {machine()}")
    print("| prompts | shared s/image | per-prompt loop s/image | speed-up |")
    print("|---:|---:|---:|---:|")
    for count in COUNTS:
        prompts = [f"concept number {i}" for i in range(count)]
        shared = timed(lambda prompts=prompts: engine.predict(image, prompts), args.repeats)
        loop = timed(lambda prompts=prompts: per_prompt_loop(engine, image, prompts), args.repeats)
        print(f"| {count} | {shared:.2f} | {loop:.2f} | {loop / shared:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
