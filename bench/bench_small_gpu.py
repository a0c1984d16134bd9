"""Small GPUs and fast heads: cached image features and quantized bases, on the bundled base.

    python bench/bench_small_gpu.py [--part steps quantize gain] [--train-images 48] [--epochs 4]
        [--repeats 3] [--steps 150] [--test-images 40] [--seeds 0 1 2] [--write]

``steps``: the demo preset (LoRA on the text encoder and heads of ``sam3-tiny-shapes``, the
vision encoder frozen) trained on the demo's synthetic target data with
``data.cache_features`` off and ram, for one epoch and for ``--epochs`` epochs (same seed);
the steady-state seconds per step are the difference of the two runs over the extra steps
(so the data preparation, the first epoch's encodings and the final validation cancel).

``quantize``: held-out mAP of the bundled base itself on the base concepts' test images with
``model.quantize`` none, nf4, fp4 and int8; then a demo adapter trained ``--steps`` steps on
the float32 base and one trained on the nf4 base, each scored on the target test images on
both bases (what loading an adapter across quantized and plain bases costs).

``gain``: the demo's gain (target test mAP of the adapter minus the base's, both on the base
it was trained on) after ``--steps`` steps on a float32, a bfloat16 (bf16 autocast) and an
nf4 base (computing in bfloat16, bf16 autocast), once per ``--seeds`` (``training.seed``: the
LoRA initialisation, dropout and data order; the data are the same): whether a 4-bit base
costs the adapter anything beyond the spread between seeds.

Prints Markdown tables; ``--write`` appends them, with the machine and the command, under
"## Small GPUs: quantized bases and cached features" in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from machine import append_entry, machine  # bench/machine.py (scripts run from bench/)

from sam3_lora.config import load_config
from sam3_lora.recipes.demo import TARGET_TASK, Budget, data_overrides, make_data
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.recipes.validate import validate

HEADING = "## Small GPUs: quantized bases and cached features"
METHODS = ("none", "nf4", "fp4", "int8")


def demo_config(data: Path, budget: Budget, run: Path, *overrides: str):
    """The demo's config on ``make_data``'s folders, as the demo trains (``data_overrides``:
    the target and the replayed base concepts, two datasets of one run)."""
    return load_config("demo", [*data_overrides(data, budget), f"output.dir={run}", "training.report_to=[]",
                                "training.log_every_steps=1000", *overrides])


def timed_training(data: Path, budget: Budget, run: Path, steps: int, cache: str) -> tuple[float, dict, float]:
    """Seconds of ``steps`` demo steps (setup excluded, final validation included), the
    cache's counts, and the seconds the vision encoder's forward took in them."""
    trainer = SAM3LoRATrainer(demo_config(data, budget, run, f"training.max_steps={steps}",
                                          f"training.eval_every_steps={10 * steps}",
                                          f"data.cache_features={cache}"), quiet=True).setup()
    vision_seconds = [0.0]   # each forward's start, negated, and its end: their sum is the time inside
    encoder = trainer.peft_model.get_base_model().vision_encoder
    encoder.register_forward_pre_hook(lambda *_: vision_seconds.append(-time.perf_counter()))
    encoder.register_forward_hook(lambda *_: vision_seconds.append(time.perf_counter()))   # returns None
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    counts = {"hits": trainer.features.hits, "misses": trainer.features.misses} if trainer.features else {}
    return seconds, counts, sum(vision_seconds)


def measure_steps(folder: Path, train_images: int, epochs: int, repeats: int) -> str:
    budget = Budget(train_images=train_images, test_images=8, steps=0, replay_images=train_images)
    make_data(folder / "data", budget, seed=0)
    per_epoch = -(-2 * train_images // load_config("demo").training.batch_size)
    runs = {"off": [], "ram": []}
    for repeat in range(repeats):   # alternating, so that a busy spell of a shared CPU hits both
        for cache, found in runs.items():
            one, _, one_vision = timed_training(folder / "data", budget, folder / f"one-{cache}-{repeat}",
                                                per_epoch, cache)
            many, counts, many_vision = timed_training(folder / "data", budget, folder / f"many-{cache}-{repeat}",
                                                       epochs * per_epoch, cache)
            found.append((one, many, counts, one_vision, many_vision))
    rows, steady, vision = [], {}, {}
    for cache, found in runs.items():   # the fastest of the repeats: the least disturbed
        one = min(run[0] for run in found)
        many = min(run[1] for run in found)
        counts = found[0][2]
        steady[cache] = (many - one) / ((epochs - 1) * per_epoch)
        vision[cache] = min(run[4] - run[3] for run in found) / ((epochs - 1) * per_epoch)
        hit_rate = f"{counts['hits'] / (counts['hits'] + counts['misses']):.0%}" if counts else "-"
        rows.append(f"| {cache} | {one / per_epoch:.3f} | {steady[cache]:.3f} | {vision[cache]:.3f} | {many:.1f} | "
                    f"{hit_rate} |")
        print(rows[-1], flush=True)
    share = vision["off"] / steady["off"]
    return "\n".join([
        (f"Demo preset on `sam3-tiny-shapes` (112 px, batch 8), {2 * train_images} training images "
         f"({per_epoch} steps per epoch), {epochs} epochs, the fastest of {repeats} alternating runs:"), "",
        ("| data.cache_features | s/step, epoch 1 | s/step after epoch 1 | of it the vision encoder | total s | "
         "images from the cache |"),
        "|---|---:|---:|---:|---:|---:|", *rows, "",
        (f"Cached, a step after the first epoch is {steady['off'] / steady['ram']:.2f}x as fast. Without the "
         f"cache the vision encoder's forward is {share:.0%} of such a step: a cache that skipped it on every "
         f"image could make the step at most {1 / (1 - share):.2f}x faster.")])


def held_out_map(config, **kwargs) -> float:
    return validate(config, **kwargs)["mAP"]


def measure_quantize(folder: Path, steps: int, test_images: int) -> str:
    budget = Budget(train_images=150, test_images=test_images, steps=steps, replay_images=150)
    data = folder / "data"
    make_data(data, budget, seed=0)
    lines = [("Held-out mAP of the bundled base on its own concepts "
              f"({test_images} test images of base concepts), by `model.quantize`:"), "",
             "| model.quantize | mAP | weights (MiB, float32 rest) |", "|---|---:|---:|"]
    from sam3_lora.model.loading import load_sam3
    from sam3_lora.model.quantize import stored_bytes

    for method in METHODS:
        config = load_config("demo", [f"data.root={data / 'base-concepts'}", f"model.quantize={method}",
                                      f"output.dir={folder / 'base' / method}"])
        value = held_out_map(config, no_lora=True, split="test", output=folder / "base" / method / "eval")
        size = stored_bytes(load_sam3("sam3-tiny-shapes", quantize=method, device="cpu").model) / 2**20
        lines.append(f"| {method} | {value:.4f} | {size:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", (f"A demo adapter ({steps} steps) trained on one base and scored on the target test "
                   f"images ({test_images}) on each base (mAP):"), "",
              "| trained on | scored on none | scored on nf4 |", "|---|---:|---:|"]
    for trained_on in ("none", "nf4"):
        run = folder / f"train-{trained_on}"
        SAM3LoRATrainer(demo_config(data, budget, run, f"training.max_steps={steps}", f"model.quantize={trained_on}",
                                    f"training.eval_every_steps={10 * steps}"), quiet=True).train()
        scores = []
        for scored_on in ("none", "nf4"):
            config = demo_config(data, budget, run, f"model.quantize={scored_on}")
            scores.append(held_out_map(config, split="test", output=run / f"eval-{scored_on}", task=TARGET_TASK))
        lines.append(f"| {trained_on} | {scores[0]:.4f} | {scores[1]:.4f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


# The bases the gain is compared on: name -> config overrides. bfloat16 and nf4 compute alike
# (bf16 autocast), so their difference is the 4-bit storage of the Linear weights alone.
GAIN_BASES = {
    "float32": ["model.dtype=float32", "training.mixed_precision=no"],
    "bfloat16": ["model.dtype=bfloat16", "training.mixed_precision=bf16"],
    "nf4": ["model.dtype=bfloat16", "training.mixed_precision=bf16", "model.quantize=nf4"],
}


def measure_gain(folder: Path, steps: int, test_images: int, seeds: list[int]) -> str:
    """The demo's gain per base and seed, as a Markdown table with the mean and spread."""
    budget = Budget(train_images=150, test_images=test_images, steps=steps, replay_images=150)
    data = folder / "data"
    make_data(data, budget, seed=0)
    gains: dict[str, list[float]] = {}
    for seed in seeds:   # seed by seed: a run cut short still has every base for its seeds
        for base, overrides in GAIN_BASES.items():
            run = folder / f"{base}-{seed}"
            SAM3LoRATrainer(demo_config(data, budget, run, f"training.max_steps={steps}", f"training.seed={seed}",
                                        f"training.eval_every_steps={10 * steps}", *overrides), quiet=True).train()
            scored = validate(demo_config(data, budget, run, *overrides), split="test", compare_base=True,
                              output=run / "eval", task=TARGET_TASK)
            gains.setdefault(base, []).append(scored["mAP"] - scored["base"]["mAP"])
            print(f"seed {seed} {base}: mAP {scored['mAP']:.4f}, base {scored['base']['mAP']:.4f}, "
                  f"gain {gains[base][-1]:+.4f}", flush=True)
    lines = [(f"The demo's gain (target test mAP, {test_images} images, adapter minus base on the base it "
              f"was trained on) after {steps} steps, per `training.seed`:"), "",
             f"| base | {' | '.join(f'seed {seed}' for seed in seeds)} | mean | min-max |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for base, found in gains.items():
        lines.append(f"| {base} | {' | '.join(f'{gain:+.4f}' for gain in found)} | {mean(found):+.4f} | "
                     f"{max(found) - min(found):.4f} |")
    differences = [nf4 - bf16 for nf4, bf16 in zip(gains["nf4"], gains["bfloat16"], strict=True)]
    lines += ["", (f"nf4 minus bfloat16, mean gain: {mean(gains['nf4']) - mean(gains['bfloat16']):+.4f}; "
                   f"per seed: {', '.join(f'{difference:+.4f}' for difference in differences)}.")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=("steps", "quantize", "gain"), default=["steps", "quantize"])
    parser.add_argument("--train-images", type=int, default=48, help="target images (as many replayed)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each setting (fastest kept)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of the cross-loading adapters")
    parser.add_argument("--test-images", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="gain: training.seed of each run")
    parser.add_argument("--write", action="store_true", help="append the tables to BENCHMARKS.md")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the steady state is measured after the first)")
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        if "steps" in args.part:
            parts.append(measure_steps(Path(folder) / "steps", args.train_images, args.epochs, args.repeats))
        if "quantize" in args.part:
            parts.append(measure_quantize(Path(folder) / "quantize", args.steps, args.test_images))
        if "gain" in args.part:
            parts.append(measure_gain(Path(folder) / "gain", args.steps, args.test_images, args.seeds))
    body = "\n\n".join(parts)
    print(body)
    if args.write:
        command = "python bench/bench_small_gpu.py " + shlex.join(sys.argv[1:])
        append_entry(HEADING, f"\n### {datetime.date.today()}: {machine()}\n\n`{command}`\n\n{body}\n")


if __name__ == "__main__":
    main()
