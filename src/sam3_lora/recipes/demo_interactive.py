"""``sam3-lora demo --task interactive``: the tracker's loop on the bundled base, on a CPU.

The same four stages as the concept demo (``recipes.demo``), for SAM3's other half: one
object from clicks.

1. data     a target domain where the bundled tracker is poor (``TARGET``: colours and shapes it
            never saw, thin arms and concave outlines, on a background of strong edges), and
            images of its own shapes: replayed in training and a held-out set for forgetting
2. train    LoRA on the tracker (``configs/demo-interactive.yaml``), SAM 2's prompts and
            correction clicks
3. score    the base and the fine-tuned tracker by simulated clicks (RITM's protocol:
            ``validate`` with ``compare_base``), on the target and on the base's shapes
4. show     a sequence of clicks on test objects, base above fine-tuned (``overlays/``)

Output folder (``--output``, default ``runs/demo-interactive``)::

    data/target/, data/base-concepts/   as the concept demo's
    run/                     the training run (adapters in best/ and last/)
    eval/target/             report.md (base vs fine-tuned, IoU by clicks), metrics.json
    eval/base-concepts/      the same on the base's own shapes
    overlays/                clicks 1-3 on test objects, base above fine-tuned
    summary.json             {"base", "finetuned", "base_concepts": {"base", "finetuned"}, ...}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sam3_lora.config import Config
from sam3_lora.data.coco.split import load_coco_split
from sam3_lora.data.images import open_image
from sam3_lora.data.interactive import object_index
from sam3_lora.evaluation.interactive import click_ious
from sam3_lora.lora.weights import adapter_disabled, load_finetuned
from sam3_lora.model.tracker import ObjectPredictor
from sam3_lora.recipes.demo import (
    REPLAY_TASK,
    TARGET_TASK,
    Budget,
    change_row,
    demo_config,
    make_data,
    one_thread,
    prepare_output,
    score_split,
    table_header,
)
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.recipes.validate_interactive import object_mask, predictor_for
from sam3_lora.serve.overlay import draw_clicks

PRESET = "demo-interactive"
# The bundled tracker learnt circles, squares and triangles in red, green, blue and yellow
# (convex, solid) on plain and noise backgrounds. Purple and magenta shapes, stars and crosses
# with thin arms and concave outlines, on a checker background of strong edges: measured, it
# fails on each of them from the first click (mIoU_1 under 0.3, never 85% IoU in 20 clicks;
# BENCHMARKS.md, "The interactive demo"), while a colour it learnt it segments on any background.
TARGET = {"concepts": ("purple star", "magenta hexagon", "purple cross"), "background": ("checker",)}
METRICS = ("mIoU_1", "mIoU_3", "mIoU_5", "NoC_85", "NoC_90", "box_mIoU")
BUDGETS = {"full": Budget(train_images=300, test_images=60, steps=400, replay_images=300),
           "quick": Budget(train_images=100, test_images=8, steps=30, replay_images=100)}
SHOWN_CLICKS = 3
OVERLAY_SCALE = 3   # the images are 112 px: enlarged so that clicks and outlines stay legible


def run_interactive_demo(output: str | Path = "runs/demo-interactive", *, quick: bool = False,
                         overwrite: bool = False, overrides: list[str] | None = None, seed: int = 0,
                         say=lambda line: None, target: dict | None = None, budget: Budget | None = None) -> dict:
    """Run the interactive demo into ``output``; returns the summary (also summary.json).
    Arguments as ``recipes.demo.run_demo``'s."""
    with one_thread():
        return _run(output, quick, overwrite, overrides, seed, say, target, budget)


def _run(output, quick, overwrite, overrides, seed, say, target, budget) -> dict:
    started = time.perf_counter()
    out = prepare_output(Path(output), overwrite)
    budget = budget or BUDGETS["quick" if quick else "full"]
    target = target or TARGET
    config = demo_config(PRESET, out, budget, seed, overrides)
    say(f"[1/4] data: target domain ({', '.join(target['concepts'])} on {'/'.join(target['background'])}) "
        f"and held-out base shapes, in {out / 'data'}")
    make_data(out / "data", budget, seed, target)

    say(f"[2/4] train: LoRA on {config.model.source}'s tracker, {budget.steps} steps on {budget.train_images} "
        f"target images and {budget.replay_images} replayed base images, "
        f"{config.training.correction_rounds} correction clicks per object")
    trained = SAM3LoRATrainer(config).train()

    say("[3/4] score: the base and the fine-tuned tracker by simulated clicks, on the target, then on the base shapes")
    after = score_split(config, out, TARGET_TASK)
    retained = score_split(config, out, REPLAY_TASK)

    say(f"[4/4] show: clicks on test objects in {out / 'overlays'}")
    overlays = write_click_overlays(config, out, count=3)
    summary = {
        "base": _pick(after["base"]), "finetuned": _pick(after),
        "base_concepts": {"base": _pick(retained["base"]), "finetuned": _pick(retained)},
        "task": "interactive", "target_domain": target, "base_model": config.model.source, "quick": quick,
        "train_steps": trained["steps"], "trainable_parameters": trained["trainable_parameters"],
        "seconds": round(time.perf_counter() - started, 1), "output": str(out),
        "report": str(out / "eval" / "target" / "report.md"), "overlays": [str(p) for p in overlays],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(format_interactive_summary(summary))
    return summary


def _pick(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in METRICS}


def click_sequence(predictor: ObjectPredictor, gt: np.ndarray, clicks: int) -> list[tuple]:
    """RITM's simulated clicks on one object: [(points (k, 2), labels (k,), mask, IoU)] after
    each of ``clicks`` clicks."""
    steps = []

    def predict(points, labels):
        mask = predictor(points, labels).numpy()
        steps.append((points.copy(), labels.copy(), mask))
        return mask

    predictor.reset()
    ious = click_ious(gt, predict, max_clicks=clicks, stop_iou=None)
    return [(*step, float(iou)) for step, iou in zip(steps, ious, strict=True)]


def write_click_overlays(config: Config, out: Path, count: int) -> list[Path]:
    """For the first object of each of ``count`` target test images: clicks 1-3 of the
    simulated user, base model above fine-tuned, each panel with its IoU."""
    split = load_coco_split(out / "data" / "target" / "test", config.data.annotation_file, name="test")
    model, processor, _ = load_finetuned(config, out / "run" / "best")
    first_objects: dict[int, object] = {}
    for image_index, obj in object_index(split):
        first_objects.setdefault(image_index, obj)
    (out / "overlays").mkdir(exist_ok=True)
    written = []
    for image_index in sorted(first_objects)[:count]:
        record, obj = split.images[image_index], first_objects[image_index]
        image = open_image(record.path)
        gt = object_mask(record, obj)
        rows = []
        for title, disabled in (("base model", True), ("fine-tuned (LoRA)", False)):
            with adapter_disabled(model, disabled), torch.no_grad():
                steps = click_sequence(predictor_for(model, processor, image), gt, SHOWN_CLICKS)
            rows.append((title, steps))
        path = out / "overlays" / f"{Path(record.file_name).stem}-clicks.png"
        click_panel(image, rows).save(path)
        written.append(path)
    return written


def click_panel(image: Image.Image, rows: list[tuple[str, list[tuple]]], scale: int = OVERLAY_SCALE) -> Image.Image:
    """One row per model, one column per click: the mask after that click and every click so
    far (a green +: the object, a red -: not it), enlarged ``scale`` times, titled with the IoU."""
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    header = 16
    width, height = big.width, big.height + header
    columns = max(len(steps) for _, steps in rows)
    panel = Image.new("RGB", (columns * width, len(rows) * height), "white")
    draw = ImageDraw.Draw(panel)
    for row, (title, steps) in enumerate(rows):
        for column, (points, labels, mask, iou) in enumerate(steps):
            enlarged = np.kron(mask, np.ones((scale, scale), dtype=bool))
            shown = draw_clicks(big.copy(), (np.asarray(points) + 0.5) * scale, labels, mask=enlarged)
            panel.paste(shown, (column * width, row * height + header))
            draw.text((column * width + 4, row * height + 2),
                      f"{title}, click {column + 1}: IoU {iou:.2f}", fill="black")
    return panel


def format_interactive_summary(summary: dict) -> str:
    """The before/after table the interactive demo prints."""
    base, tuned, shapes = summary["base"], summary["finetuned"], summary["base_concepts"]
    width = 26
    lines = [table_header(width),
             *(change_row(f"target {key}", base[key], tuned[key], width) for key in METRICS),
             *(change_row(f"base shapes {key}", shapes["base"][key], shapes["finetuned"][key], width)
               for key in ("mIoU_1", "NoC_85")),
             "",
             (f"done in {summary['seconds']:.0f} s; report {summary['report']}, click sequences in "
             f"{Path(summary['output']) / 'overlays'}, numbers in {Path(summary['output']) / 'summary.json'}")]
    return "\n".join(lines)
