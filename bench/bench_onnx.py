"""ONNX export against PyTorch, side by side: latency, export time, sizes, agreement, mAP.

    OMP_NUM_THREADS=1 python bench/bench_onnx.py --model sam3-tiny-shapes --write
    OMP_NUM_THREADS=1 flock /work/locks/bigmem python bench/bench_onnx.py --model sam3 --image-size 336 --write

Backends, all on the CPU with ``--threads`` threads (default 1): PyTorch fp32
(``SAM3LoRAInference``), PyTorch bf16 (``model.dtype=bfloat16``, where the config has that
key), onnxruntime fp32 and INT8 (``SAM3OnnxInference`` on ``sam3-lora export --onnx`` and its
``--quantize int8`` copy). The model is exported from the PyTorch backend's own weights.

- latency: ``predict(image, K prompts)`` for K = 1 and 16 on a 640x480 image, text cache warm
  (vision encoder + prompt decoder + post-processing at threshold 0.5): the median over
  ``--repeats`` runs after a warm-up, in CPU seconds of the process (with one thread that is
  what an idle core takes; this machine is shared, so wall time is reported beside it);
- export: seconds of ``export_sam3_onnx`` (three graphs and onnxruntime's check) and of the
  INT8 quantization, and the bytes of each folder;
- agreement with PyTorch fp32 on every query (threshold 0) of ``--agreement-images`` scenes
  x 6 prompts: largest score difference, smallest and mean mask IoU, detections that flip at
  0.5;
- mAP (COCO, masks) on the bundled base's held-out test split, every category prompted on
  every image, detections scoring 0.05 or more (``evaluation.min_score``), for a bundled base
  (its split is regenerated from the recipe below) or any model with ``--test-split DIR``.

The bundled base is retrained from time to time: after a new one lands, the first command
above re-measures everything about it (a few minutes). If its data recipe changes, update
``BASE_TEST_SPLIT`` (configs/base.yaml's synth command) or pass ``--test-split``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import append_entry, machine  # bench/machine.py (scripts run from bench/)
from PIL import Image

from sam3_lora.config import ModelConfig, load_config
from sam3_lora.data.coco.split import load_coco_split
from sam3_lora.data.results import coco_results
from sam3_lora.data.synth import compose_scene, synthesize
from sam3_lora.evaluation.metrics import coco_metrics
from sam3_lora.evaluation.results import ground_truth
from sam3_lora.export.onnx import export_sam3_onnx
from sam3_lora.export.onnx_folder import CONFIG_FILE
from sam3_lora.export.quantize import quantize_export
from sam3_lora.model.loading import BUNDLED
from sam3_lora.serve.inference import SAM3LoRAInference
from sam3_lora.serve.onnx_engine import SAM3OnnxInference

REPO = Path(__file__).resolve().parents[1]
HEADING = "## ONNX export and onnxruntime"
BASE_TEST_SPLIT = {"colors": ["red", "green", "blue", "yellow"], "shapes": ["circle", "square", "triangle"],
                   "background": ["plain", "noise"], "images_per_split": {"test": 150}, "image_size": 112,
                   "objects_per_image": (1, 3), "radius_range": (0.2, 0.32), "seed": 0}
"""configs/base.yaml's ``sam3-lora data synth`` recipe, test split only (each image is seeded
by (seed, split, index), so this is the split the base was validated on)."""
PROMPT_POOL = ["red circle", "blue square", "green triangle", "yellow circle", "red square", "blue triangle",
               "green circle", "yellow square", "red triangle", "blue circle", "green square", "yellow triangle",
               "purple star", "a dog", "orange hexagon", "cyan cross"]
COUNTS = (1, 16)


def median_seconds(fn, repeats: int) -> dict:
    """Median CPU (process) and wall seconds of ``fn`` over ``repeats`` runs after a warm-up."""
    fn()
    cpus, walls = [], []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return {"cpu": statistics.median(cpus), "wall": statistics.median(walls)}


def scenes(count: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """Synthetic scenes of the base's concepts (and nothing else)."""
    concepts = [(i + 1, name.split()[1], name.split()[0]) for i, name in enumerate(PROMPT_POOL[:12])]
    return [Image.fromarray(compose_scene(np.random.default_rng([seed, index]), *size, concepts, ["plain", "noise"],
                                          (1, 4), (0.12, 0.25), 20).image) for index in range(count)]


def folder_bytes(folder: Path) -> dict:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {"total": sum(files.values()), "files": files}


def pytorch_engine(model: str, image_size: int | None, dtype: str | None) -> SAM3LoRAInference:
    """``SAM3LoRAInference`` on the base model alone, on the CPU."""
    overrides = [f"model.source={model}"] + ([f"model.image_size={image_size}"] if image_size else [])
    if dtype:
        overrides.append(f"model.dtype={dtype}")
    engine = SAM3LoRAInference(config=load_config(None, overrides), no_lora=True)
    engine.model.to("cpu")
    engine.device = torch.device("cpu")
    return engine


def export_both(engine: SAM3LoRAInference, work: Path) -> dict:
    """fp32 export of the engine's model (reused when ``work`` already holds one) and its INT8
    copy; seconds and bytes of each."""
    out = {}
    fp32, int8 = work / "ort-fp32", work / "ort-int8"
    if (fp32 / CONFIG_FILE).is_file():
        print(f"reusing {fp32}", flush=True)
    else:
        started = time.perf_counter()
        export_sam3_onnx(engine.model, engine.processor.tokenizer, fp32, progress=lambda line: print("  " + line,
                                                                                                   flush=True))
        print(f"exported in {time.perf_counter() - started:.0f} s", flush=True)
    out["ort-fp32"] = {"seconds": json.loads((fp32 / CONFIG_FILE).read_text())["export_seconds"],
                       "bytes": folder_bytes(fp32)}
    if not (int8 / CONFIG_FILE).is_file():
        quantize_export(fp32, int8)
    out["ort-int8"] = {"seconds": json.loads((int8 / CONFIG_FILE).read_text())["quantization"]["seconds"],
                       "bytes": folder_bytes(int8)}
    return out


def latency(engine, image: Image.Image, repeats: int) -> dict:
    """Per K: median seconds of predict(image, K prompts), text features cached."""
    timings = {}
    for count in COUNTS:
        prompts = PROMPT_POOL[:count]
        engine.predict(image, prompts)   # fills the text cache
        timings[count] = median_seconds(lambda prompts=prompts: engine.predict(image, prompts), repeats)
    return timings


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def agreement(reference: list[list[dict]], got: list[list[dict]]) -> dict:
    """Every query of every (image, prompt) against PyTorch fp32: queries matched by nearest
    box and score; how far scores and masks moved, and how many cross 0.5."""
    score_diffs, ious, flips, total = [], [], 0, 0
    for ref_image, got_image in zip(reference, got, strict=True):
        for ref, mine in zip(ref_image, got_image, strict=True):
            flips += int(np.sum(ref["scores"] >= 0.5) != np.sum(mine["scores"] >= 0.5))
            total += 1
            for box, score, mask in zip(ref["boxes"], ref["scores"], ref["masks"], strict=True):
                best = int(np.argmin(np.abs(mine["boxes"] - box).max(axis=1) + np.abs(mine["scores"] - score)))
                score_diffs.append(abs(float(mine["scores"][best]) - float(score)))
                ious.append(iou(mask, mine["masks"][best]))
    return {"queries": len(ious), "max_score_diff": max(score_diffs), "min_mask_iou": min(ious),
            "mean_mask_iou": float(np.mean(ious)), "share_iou_ge_0_99": float(np.mean(np.array(ious) >= 0.99)),
            "prompt_units_whose_count_at_0_5_changed": f"{flips}/{total}"}


def held_out_map(engine, split_dir: Path) -> dict:
    """COCO mask mAP on a split: every category prompted on every image, scores >= 0.05."""
    split = load_coco_split(split_dir, name=split_dir.name)
    gt = ground_truth(split)
    categories = sorted(split.categories)
    prompts = [split.categories[c] for c in categories]
    results, started = [], time.perf_counter()
    for record in split.images:
        found = engine.predict(split_dir / record.file_name, prompts, threshold=0.05)
        for category, answer in zip(categories, found, strict=True):
            results += coco_results(answer["scores"], answer["boxes"], answer["masks"], record.id, category)
    metrics = coco_metrics(gt, results, "segm")
    return {"mAP": metrics["mAP"], "mAP50": metrics["mAP50"], "images": len(split.images), "prompts": len(prompts),
            "seconds": round(time.perf_counter() - started, 1)}


def test_split(args, work: Path) -> Path | None:
    if args.test_split:
        return Path(args.test_split)
    if args.model not in BUNDLED:
        return None
    root = work / "base-test-split"
    if not (root / "test").is_dir():
        synthesize(root, **BASE_TEST_SPLIT)
    return root / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3-tiny-shapes", help="model.source: a bundled base, a preset, a folder")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--agreement-images", type=int, default=4)
    parser.add_argument("--test-split", metavar="DIR", help="a COCO split folder for mAP (default: the bundled "
                        "base's regenerated test split; none for other models)")
    parser.add_argument("--map-images", type=int, help="score only the first N images of the split")
    parser.add_argument("--workdir", help="keep the exports here and reuse them (default: a temporary folder)")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--write", action="store_true", help=f"append the table under {HEADING!r} in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    split = test_split(args, work)
    if split is not None and args.map_images:
        split = trimmed_split(split, args.map_images, work)

    backends = ["pytorch-fp32", "pytorch-bf16", "ort-fp32", "ort-int8"]
    if "dtype" not in ModelConfig.model_fields:   # model.dtype comes with issue 14
        backends.remove("pytorch-bf16")
    results = {"model": args.model, "machine": machine(), "load_average_at_start": load,
               "backends": dict.fromkeys(["pytorch-fp32", "pytorch-bf16", "ort-fp32", "ort-int8"])}
    reference_engine = pytorch_engine(args.model, args.image_size, None)
    size = reference_engine.processor.image_size
    results["image_size"] = size
    results["exports"] = export_both(reference_engine, work)
    photo = scenes(1, (640, 480), seed=11)[0]
    agreement_images = scenes(args.agreement_images, (size, size), seed=12)
    reference = None
    for name in backends:
        if name == "pytorch-fp32":
            engine = reference_engine
        elif name == "pytorch-bf16":
            engine = pytorch_engine(args.model, args.image_size, "bfloat16")
        else:
            engine = SAM3OnnxInference(work / name, threads=args.threads)
        row = {"latency": latency(engine, photo, args.repeats)}
        answers = engine.predict_batch(agreement_images, PROMPT_POOL[:6], threshold=0.0)
        if reference is None:
            reference = answers
        else:
            row["agreement"] = agreement(reference, answers)
        if split is not None:
            row["map"] = held_out_map(engine, split)
        results["backends"][name] = row
        print(name, json.dumps(row, default=str), flush=True)
        del engine
        reference_engine = None
        gc.collect()
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = markdown(results, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.write:
        append_entry(HEADING, table, REPO / "BENCHMARKS.md")


def trimmed_split(split: Path, count: int, work: Path) -> Path:
    """The first ``count`` images of a split, as a split folder of its own."""
    data = json.loads((split / "_annotations.coco.json").read_text())
    keep = data["images"][:count]
    ids = {image["id"] for image in keep}
    out = work / f"{split.name}-first-{count}"
    out.mkdir(exist_ok=True)
    for image in keep:
        (out / image["file_name"]).write_bytes((split / image["file_name"]).read_bytes())
    data.update(images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (out / "_annotations.coco.json").write_text(json.dumps(data))
    return out


def markdown(results: dict, args) -> str:
    """The BENCHMARKS.md entry: command, machine, one table, the goals."""
    rows = results["backends"]
    base = rows["pytorch-fp32"]
    exports = results["exports"]
    command = (f"OMP_NUM_THREADS=1 python bench/bench_onnx.py --model {args.model}"
               + (f" --image-size {args.image_size}" if args.image_size else "")
               + f" --threads {args.threads} --repeats {args.repeats}"
               + (f" --map-images {args.map_images}" if args.map_images else "") + " --write")
    lines = [f"### {datetime.date.today()}: `{args.model}` at {results['image_size']} px, {args.threads} thread(s)",
             "", f"Command: `{command}`.  ",
             (f"Machine: {results['machine']}; load average at start {results['load_average_at_start']:.2f}; "
             f"peak RSS of the run {results['peak_rss_gb']:.1f} GB."), "",
             ("| backend | predict K=1 (ms) | K=16 (ms) | vs PyTorch fp32 (K=1 / K=16) | files | "
              "max score diff | min / mean mask IoU | mAP | mAP50 |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        if row is None:
            lines.append(f"| {name} | (to fill: needs `model.dtype`, issue 14) | | | | | | | |")
            continue
        k1, k16 = (row["latency"][k]["cpu"] for k in COUNTS)
        speed = f"{base['latency'][1]['cpu'] / k1:.2f}x / {base['latency'][16]['cpu'] / k16:.2f}x"
        size = f"{exports[name]['bytes']['total'] / 1e6:,.1f} MB" if name in exports else "-"
        agree = row.get("agreement")
        score = f"{agree['max_score_diff']:.1e}" if agree else "(reference)"
        masks = f"{agree['min_mask_iou']:.4f} / {agree['mean_mask_iou']:.4f}" if agree else ""
        maps = [f"{row['map'][key]:.4f}" if row.get("map") else "-" for key in ("mAP", "mAP50")]
        lines.append(f"| {name} | {1000 * k1:,.1f} | {1000 * k16:,.1f} | {speed} | {size} | {score} | {masks} | "
                     f"{maps[0]} | {maps[1]} |")
    fp32_seconds = exports["ort-fp32"]["seconds"]
    lines += ["", f"Export (fp32, three graphs and the onnxruntime check): {fp32_seconds.get('total')} s "
                  f"(vision {fp32_seconds.get('vision_encoder')} s, text {fp32_seconds.get('text_encoder')} s, "
                  f"decoder {fp32_seconds.get('prompt_decoder')} s); INT8 quantization "
                  f"{sum(exports['ort-int8']['seconds'].values()):.1f} s. Files: "
                  + "; ".join(f"{name}: " + ", ".join(f"{file} {size / 1e6:,.1f} MB" for file, size in
                                                      exports[name]["bytes"]["files"].items() if file.endswith(
                                                          (".onnx", ".data")))
                              for name in ("ort-fp32", "ort-int8")) + "."]
    agree_lines = [f"{name}: {row['agreement']['queries']} queries, share with mask IoU >= 0.99 "
                   f"{row['agreement']['share_iou_ge_0_99']:.3f}, (image, prompt) units whose count at 0.5 changed "
                   f"{row['agreement']['prompt_units_whose_count_at_0_5_changed']}"
                   for name, row in rows.items() if row and row.get("agreement")]
    lines += ["", "Agreement with PyTorch fp32 (threshold 0, every query of "
              f"{args.agreement_images} scenes x 6 prompts): " + "; ".join(agree_lines) + "."]
    goals = []
    ort, int8 = rows["ort-fp32"], rows["ort-int8"]
    if base.get("map"):
        goals.append(f"ORT fp32 mAP - PyTorch fp32 = {ort['map']['mAP'] - base['map']['mAP']:+.4f} (goal: within "
                     f"0.005); INT8 - PyTorch fp32 = {int8['map']['mAP'] - base['map']['mAP']:+.4f} (goal: a drop of "
                     f"0.01 or less), on {base['map']['images']} held-out images x {base['map']['prompts']} prompts")
    goals.append(f"INT8 vs PyTorch fp32: {base['latency'][1]['cpu'] / int8['latency'][1]['cpu']:.2f}x at K=1, "
                 f"{base['latency'][16]['cpu'] / int8['latency'][16]['cpu']:.2f}x at K=16 (goal: 1.5x or more)")
    lines += ["", "Goals: " + "; ".join(goals) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
