"""Training data pipeline throughput: ConceptDataset + collate through a DataLoader.

Measures samples/second at SAM3's 1008 px on a synthetic shapes set (640 px images, 1-5
shapes each, polygon and RLE masks), with 1 and 2 loader workers, default augmentation
(random resize + flip) and 2 negatives per image. Prints a Markdown table and appends it,
with the machine and the command, under "## Data loading" in BENCHMARKS.md.

    python bench/bench_data.py [--images 300] [--batches 40] [--batch-size 2] [--repeats 3]
        [--workers 1 2] [--check-images 100] [--check-only] [--no-write]

Also measures what checking a split before training costs (``load_coco_split``): reading
image headers only, against decoding every image in full (what finds truncated files), on
``--check-images`` synthetic 1008 px images saved as PNG and as JPEG (quality 90).
``--check-only`` measures and records that alone.

``--photos N`` measures reading phone-size photos instead: N synthetic 4000 x 3000 JPEGs
(quality 90, smooth gradients plus noise, one box each) through ``ConceptDataset`` in-process
(no loader), at training sizes 112 and 1008 (``--photo-sizes``), as samples/s of CPU time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import append_entry, machine  # bench/machine.py (scripts run from bench/)

from sam3_lora.config import DataConfig
from sam3_lora.data.collate import build_dataloader
from sam3_lora.data.records import CocoSplit, ImageRecord, ObjectRecord

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 1008
HEADING = "## Data loading"


def make_split(root: Path, count: int) -> CocoSplit:
    """Synthesise ``count`` 640 px training images and read them back as a ``CocoSplit``."""
    from sam3_lora.data.synth import synthesize

    synthesize(root, images_per_split={"train": count}, image_size=640, seed=0)
    split_dir = root / "train"
    try:
        from sam3_lora.data.coco.split import load_coco_split
    except ImportError:
        return _read_coco(split_dir)
    return load_coco_split(split_dir)


def _read_coco(split_dir: Path) -> CocoSplit:
    """Minimal COCO reader, used only while ``data/coco.py`` is not available."""
    path = split_dir / "_annotations.coco.json"
    document = json.loads(path.read_text())
    images = {
        item["id"]: ImageRecord(
            item["id"],
            item["file_name"],
            split_dir / item["file_name"],
            item["width"],
            item["height"],
        )
        for item in document["images"]
    }
    for ann in document["annotations"]:
        images[ann["image_id"]].objects.append(
            ObjectRecord(
                ann["id"],
                ann["category_id"],
                ann["bbox"],
                ann.get("segmentation"),
                bool(ann.get("iscrowd", 0)),
                ann.get("area", 0.0),
            )
        )
    categories = {c["id"]: c["name"] for c in document["categories"]}
    return CocoSplit("train", split_dir, path, categories, list(images.values()))


def measure(split: CocoSplit, workers: int, batches: int, batch_size: int) -> float:
    """Samples/second over ``batches`` batches, after one warm-up batch (worker start-up)."""
    cfg = DataConfig(num_workers=workers)
    loader = build_dataloader(split, cfg, IMAGE_SIZE, batch_size, train=True, seed=0)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        seen += next(iterator)["pixel_values"].shape[0]
    return seen / (time.perf_counter() - start)


def cpu_ms_per_sample(split: CocoSplit, batches: int, batch_size: int) -> float:
    """CPU milliseconds per sample in-process on one thread, as in a worker.

    CPU time, unlike wall time, does not move when other processes share the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what DataLoader sets in each worker
    try:
        iterator = iter(build_dataloader(split, DataConfig(), IMAGE_SIZE, batch_size, True))
        next(iterator)
        start, seen = time.process_time(), 0
        for _ in range(batches):
            seen += next(iterator)["pixel_values"].shape[0]
        return (time.process_time() - start) * 1000 / seen
    finally:
        torch.set_num_threads(threads)


def table(rows: list[tuple[int, list[float]]], batch_size: int, cpu_ms: float) -> str:
    """One row per worker count: median and best of the repeats, and median per worker;
    then the CPU cost per sample."""
    lines = [
        "| workers | batch size | samples/s (median) | samples/s (best) | per worker (median) |",
        "|--------:|-----------:|-------------------:|-----------------:|--------------------:|",
    ]
    for workers, rates in rows:
        median = statistics.median(rates)
        lines.append(
            f"| {workers} | {batch_size} | {median:.1f} | {max(rates):.1f} | {median / workers:.1f} |"
        )
    lines.append(
        f"\nCPU cost in-process (num_workers 0, 1 thread): {cpu_ms:.1f} ms per sample, "
        f"i.e. {1000 / cpu_ms:.1f} samples per CPU-second (the ceiling for one worker)."
    )
    return "\n".join(lines)


def check_cost(root: Path, count: int, repeats: int) -> str:
    """Milliseconds per image of ``load_coco_split`` with headers only and with every image
    decoded, on ``count`` 1008 px images as PNG and as JPEG; a Markdown table (best of
    ``repeats``: the work is deterministic, so the best run is the least disturbed)."""
    from PIL import Image

    from sam3_lora.data.coco.split import load_coco_split
    from sam3_lora.data.synth import synthesize

    synthesize(root / "png", images_per_split={"train": count}, image_size=IMAGE_SIZE,
               background=["stripes", "noise", "gradient"], seed=0)
    coco = json.loads((root / "png" / "train" / "_annotations.coco.json").read_text())
    (root / "jpeg" / "train").mkdir(parents=True)
    for image in coco["images"]:
        name = Path(image["file_name"]).with_suffix(".jpg").name
        Image.open(root / "png" / "train" / image["file_name"]).save(
            root / "jpeg" / "train" / name, quality=90)
        image["file_name"] = name
    (root / "jpeg" / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    lines = ["| format | MB per image | headers only, ms/image | full decode, ms/image |",
             "|---|---:|---:|---:|"]
    for form in ("png", "jpeg"):
        folder = root / form / "train"
        size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix != ".json") / count / 1e6
        times = {}
        for full in (False, True):
            runs = []
            for _ in range(repeats):
                start = time.process_time()
                load_coco_split(folder, full_decode=full)
                runs.append((time.process_time() - start) * 1000 / count)
            times[full] = min(runs)
        lines.append(f"| {form.upper()} | {size:.2f} | {times[False]:.2f} | {times[True]:.1f} |")
    return "\n".join(lines)


def make_photos(root: Path, count: int) -> Path:
    """``count`` 4000 x 3000 JPEGs like phone photos (gradients, texture, quality 90) with one
    box each, as a split folder."""
    import numpy as np
    from PIL import Image

    split_dir = root / "train"
    split_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:3000, 0:4000].astype(np.float32)
    images, annotations = [], []
    for index in range(count):
        phase = rng.uniform(0, 6.28, 3)
        channels = [127 + 90 * np.sin(xs / (300 + 97 * c) + ys / (410 - 53 * c) + phase[c])
                    for c in range(3)]
        pixels = np.stack(channels, -1) + rng.normal(0, 12, (3000, 4000, 3)).astype(np.float32)
        name = f"{index:03d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(split_dir / name, quality=90)
        images.append({"id": index + 1, "file_name": name, "width": 4000, "height": 3000})
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1,
                            "bbox": [1000, 800, 1200, 900], "area": 1080000, "iscrowd": 0,
                            "segmentation": [[1000, 800, 2200, 800, 2200, 1700, 1000, 1700]]})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}]}
    (split_dir / "_annotations.coco.json").write_text(json.dumps(document))
    return split_dir


def photo_rates(split_dir: Path, sizes: list[int], repeats: int) -> str:
    """Samples per CPU-second of ``ConceptDataset.__getitem__`` (decode, resize, targets) on
    the photos, per training size: best of ``repeats`` passes (the work is deterministic)."""
    from sam3_lora.data.coco.split import load_coco_split
    from sam3_lora.data.dataset import ConceptDataset

    split = load_coco_split(split_dir, full_decode=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what DataLoader sets in each worker
    lines = ["| training size | ms CPU per sample | samples per CPU-second |", "|---:|---:|---:|"]
    try:
        for size in sizes:
            dataset = ConceptDataset(split, DataConfig(), size, train=True)
            runs = []
            for _ in range(repeats):
                start = time.process_time()
                for index in range(len(dataset)):
                    dataset[index]
                runs.append((time.process_time() - start) / len(dataset))
            best = min(runs)
            lines.append(f"| {size} | {best * 1000:.0f} | {1 / best:.1f} |")
    finally:
        torch.set_num_threads(threads)
    return "\n".join(lines)


def record_photos(markdown: str, args: argparse.Namespace, load: float, label: str) -> None:
    """Append the photo measurement under "## Data loading"."""
    command = "python bench/bench_data.py " + shlex.join(sys.argv[1:])
    entry = (
        f"\n### {datetime.date.today().isoformat()}: reading phone-size JPEGs ({label})\n\n"
        f"Machine: {machine()}; load average at start {load:.2f}.  \n"
        f"Command: `{command.strip()}`  \n"
        f"Data: {args.photos} synthetic 4000 x 3000 JPEGs (quality 90), one object each; "
        f"`ConceptDataset` in-process, 1 thread, default augmentation; best of {args.repeats}.\n\n"
        f"{markdown}\n"
    )
    append_entry(HEADING, entry, REPO / "BENCHMARKS.md")


def record_check(markdown: str, args: argparse.Namespace, load: float) -> None:
    """Append the pre-check measurement under "## Data loading"."""
    command = "python bench/bench_data.py " + " ".join(sys.argv[1:])
    entry = (
        f"\n### {datetime.date.today().isoformat()}: checking a split before training\n\n"
        f"Machine: {machine()}; load average at start {load:.2f}.  \n"
        f"Command: `{command.strip()}`  \n"
        f"Data: {args.check_images} synthetic {IMAGE_SIZE} px shape images (stripes, noise and "
        "gradient backgrounds), as PNG and as JPEG (quality 90). `load_coco_split` CPU time "
        f"per image, best of {args.repeats}; training and `validate` decode in full (the default).\n\n"
        f"{markdown}\n"
    )
    append_entry(HEADING, entry, REPO / "BENCHMARKS.md")


def record(markdown: str, args: argparse.Namespace, load: float) -> None:
    """Append this run under the "## Data loading" heading of BENCHMARKS.md."""
    path = REPO / "BENCHMARKS.md"
    command = "python bench/bench_data.py " + " ".join(sys.argv[1:])
    entry = (
        f"\n### {datetime.date.today().isoformat()}: training pipeline at {IMAGE_SIZE} px\n\n"
        f"Machine: {machine()}; load average at start {load:.2f} (the cores "
        "were shared with other jobs, so wall-clock rates are lower bounds).  \n"
        f"Command: `{command.strip()}`  \n"
        f"Data: {args.images} synthetic 640 px shape images (1-5 objects, polygon and RLE "
        "masks); default DataConfig (random resize, flip 0.5, 2 negatives); masks at 288 px.\n\n"
        f"{markdown}\n"
    )
    append_entry(HEADING, entry, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count")
    parser.add_argument("--check-images", type=int, default=100,
                        help="images for the split-check measurement")
    parser.add_argument("--check-only", action="store_true",
                        help="measure (and record) only what checking a split costs")
    parser.add_argument("--photos", type=int, default=0, metavar="N",
                        help="measure (and record) only reading N 4000 x 3000 JPEGs")
    parser.add_argument("--photo-sizes", type=int, nargs="+", default=[112, 1008])
    parser.add_argument("--label", default="", help="what the photo entry's title says it measures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            markdown = photo_rates(make_photos(Path(tmp), args.photos), args.photo_sizes,
                                   args.repeats)
        print(markdown)
        if not args.no_write:
            record_photos(markdown, args, load, args.label or "decoded in full")
        return
    with tempfile.TemporaryDirectory() as tmp:
        check = check_cost(Path(tmp) / "check", args.check_images, args.repeats)
    print(check)
    if not args.no_write:
        record_check(check, args, load)
    if args.check_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        split = make_split(Path(tmp) / "shapes", args.images)
        rows = [
            (w, [measure(split, w, args.batches, args.batch_size) for _ in range(args.repeats)])
            for w in args.workers
        ]
        cpu_ms = cpu_ms_per_sample(split, args.batches, args.batch_size)
    markdown = table(rows, args.batch_size, cpu_ms)
    print(markdown)
    if not args.no_write:
        record(markdown, args, load)


if __name__ == "__main__":
    main()
