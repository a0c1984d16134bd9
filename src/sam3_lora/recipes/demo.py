"""``sam3-lora demo``: the whole loop on the bundled tiny base, on a laptop CPU, in minutes.

1. data     a target domain the base never saw (new colours and shapes on a new background),
            and images of the base's own concepts: as many as the target's to replay in
            training (the usual guard against forgetting), a held-out set to measure
            forgetting on
2. train    LoRA fine-tuning of the base (``configs/demo.yaml``) on two datasets of one run
            (``data.datasets``, one shared adapter): ``target``, the target's train split, and
            ``replay``, the base's concepts, each batch drawn from one of them by weight (their
            images: the replay's share of a pooled train split); ``val_loss/target`` and
            ``val_loss/replay`` logged at each evaluation
3. score    the adapter and the base (the adapter switched off: the base is scored once) on
            the target test split, with the report and the label-free forgetting check; then
            both models on the held-out base concepts
4. show     a before/after table, overlays of a few test images, ``summary.json``

Output folder (``--output``, default ``runs/demo``)::

    data/target/             the target-domain dataset (train/valid/test)
    data/base-concepts/      images of the base's concepts: train/ and valid/ (the replay
                             dataset's), test/ (held out: forgetting)
    run/                     the training run: config.yaml, best/ and last/ adapters, logs
    eval/target/             report.md (base vs fine-tuned), metrics.json, predictions.json
                             (base_predictions.json: the base's)
    eval/base-concepts/      the same on the base's concepts: how much was forgotten
    overlays/                base and fine-tuned predictions on test images, side by side
    summary.json             {"base": {...}, "finetuned": {...}, "base_concepts": {...}, ...}
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from sam3_lora.config import DEFAULT_DATA_ROOT, Config, load_config
from sam3_lora.data.coco.split import load_coco_split
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import Sam3LoraError
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.recipes.validate import validate
from sam3_lora.serve.inference import SAM3LoRAInference
from sam3_lora.serve.overlay import draw_overlay

BASE_MODEL = "sam3-tiny-shapes"
# The base learnt 4 colours x {circle, square, triangle} on plain and noise backgrounds. The
# target brings colours, shapes and a background it never saw: every prompt is new to it.
# Three concepts, not all 12 of 4 new colours x 3 new shapes: a few minutes of LoRA on a CPU
# learn three new words well and twelve poorly (bench/demo_choices.py).
TARGET = {"concepts": ("purple star", "orange hexagon", "cyan cross"), "background": ("stripes",)}
BASE_CONCEPTS = {"colors": ("red", "green", "blue", "yellow"), "shapes": ("circle", "square", "triangle"),
                 "background": ("plain", "noise")}
SHAPE_STYLE = {"image_size": 112, "objects_per_image": (1, 3), "radius_range": (0.2, 0.32)}   # as the base's data
METRICS = ("mAP", "mAP50", "cgF1", "presence_AUC")
# The run's datasets (``data.datasets``, their losses logged as val_loss/NAME) and their folders
# in data/: the target's, and the base's concepts (replayed; their test split measures forgetting).
TARGET_TASK, REPLAY_TASK = "target", "replay"
DATA_FOLDERS = {TARGET_TASK: "target", REPLAY_TASK: "base-concepts"}
OVERLAY_THRESHOLD = 0.3   # below cgF1's 0.5: the overlays also show the less sure detections


@dataclass(frozen=True)
class Budget:
    """How much data and training a demo run uses (the video demo counts clips where the
    fields say images)."""

    train_images: int
    test_images: int
    steps: int
    replay_images: int = 0   # images of the base's concepts trained on beside the target's (replay)


# Measured on the bundled base (bench/demo_choices.py, BENCHMARKS.md): more steps learn more
# and forget more; replayed base-concept images (as many as target images) and leaving the
# vision encoder untouched keep the base's concepts (base-concept mAP drop 0.010 in the full
# demo; the previous recipe, LoRA on the vision encoder and a third as many replayed images,
# lost 0.131 in the quick one).
BUDGETS = {"full": Budget(train_images=300, test_images=80, steps=500, replay_images=300),
           "quick": Budget(train_images=150, test_images=40, steps=300, replay_images=150)}


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside: the bundled tiny model's parallel regions are too small to
    pay for a second (``demo --quick`` on 2 idle cores: 101 s on one thread, 143 s on two with
    passive waiting; BENCHMARKS.md "A shared CPU")."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class DemoError(Sam3LoraError):
    """The demo cannot run as asked (e.g. its output folder holds something else)."""


def run_demo(output: str | Path = "runs/demo", *, quick: bool = False, overwrite: bool = False,
             overrides: list[str] | None = None, seed: int = 0, say=lambda line: None,
             target: dict | None = None, budget: Budget | None = None) -> dict:
    """Run the demo into ``output``; returns the summary (also written to summary.json).

    ``say`` receives each progress line and the final table (the CLI prints them).
    ``overrides`` change the demo's config (``section.key=value``), e.g. to check that
    ``training.learning_rate=0`` shows no gain. ``target`` (``synthesize`` arguments) and
    ``budget`` replace the target domain and the budget (``bench/demo_choices.py``).
    The tracker's demo is ``recipes.demo_interactive.run_interactive_demo``, the video
    tracker's ``recipes.demo_video.run_video_demo``.
    """
    with one_thread():
        return _run_demo(output, quick, overwrite, overrides, seed, say, target, budget)


def _run_demo(output, quick, overwrite, overrides, seed, say, target, budget) -> dict:
    started = time.perf_counter()
    out = prepare_output(Path(output), overwrite)
    budget = budget or BUDGETS["quick" if quick else "full"]
    target = target or TARGET
    config = demo_config("demo", out, budget, seed, overrides)
    say(f"[1/4] data: target domain ({_describe(target)}) and held-out base concepts, in {out / 'data'}")
    make_data(out / "data", budget, seed, target)

    say(f"[2/4] train: LoRA on {config.model.source}, {config.training.max_steps} steps on "
        f"{budget.train_images} target images and {budget.replay_images} replayed base-concept images")
    trained = SAM3LoRATrainer(config).train()

    say("[3/4] score: the base and the fine-tuned model on the target test split, then on the base concepts")
    after = score_split(config, out, TARGET_TASK)
    retained = score_split(config, out, REPLAY_TASK)

    say(f"[4/4] show: overlays in {out / 'overlays'}")
    overlays = write_overlays(config, out, count=3)
    summary = {
        "base": _pick(after["base"]), "finetuned": _pick(after),
        "base_concepts": {"base": _pick(retained["base"]), "finetuned": _pick(retained)},
        "forgetting": {k: v for k, v in retained.get("forgetting", {}).items() if k != "per_prompt"},
        "target_domain": target, "base_model": config.model.source, "quick": quick,
        "train_steps": trained["steps"], "trainable_parameters": trained["trainable_parameters"],
        "seconds": round(time.perf_counter() - started, 1), "output": str(out),
        "report": str(out / "eval" / "target" / "report.md"), "overlays": [str(p) for p in overlays],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(format_summary(summary))
    return summary


def demo_config(preset: str, out: Path, budget: Budget, seed: int, overrides: list[str] | None) -> Config:
    """A demo's preset pointed at ``out`` (its data, ``data_overrides``, and run folder), with
    the budget's steps, the seed and the caller's ``overrides`` last."""
    return load_config(preset, [*data_overrides(out / "data", budget), f"output.dir={out / 'run'}",
                                f"training.max_steps={budget.steps}", f"training.seed={seed}", *(overrides or [])])


def data_overrides(data: Path, budget: Budget) -> list[str]:
    """What a demo trains on (``make_data``'s folders in ``data``): with replay, the target and
    the base's concepts as two datasets of one run (``data.datasets``), weighted by their train
    images, so that a batch holds as many replayed images in expectation as one drawn from the
    two splits pooled; else the target's folder alone."""
    if not budget.replay_images:
        return [f"data.root={data / DATA_FOLDERS[TARGET_TASK]}"]
    weights = {TARGET_TASK: budget.train_images, REPLAY_TASK: budget.replay_images}
    entries = [{"name": name, "root": str(data / DATA_FOLDERS[name]), "weight": weight}
               for name, weight in weights.items()]
    # JSON is YAML whose strings are quoted: a root reads back as written, whatever its characters
    return [f"data.root={DEFAULT_DATA_ROOT}", f"data.datasets={json.dumps(entries)}"]


def score_split(config: Config, out: Path, dataset: str) -> dict:
    """The test split of ``dataset`` (``TARGET_TASK``, or ``REPLAY_TASK``: the held-out base
    concepts) scored by the fine-tuned model and by the base, into eval/ (its folder's name).
    A run without replay trains on the target alone: the base concepts are read from their folder."""
    folder = DATA_FOLDERS[dataset]
    output = out / "eval" / folder
    if config.data.datasets:
        return validate(config, split="test", output=output, compare_base=True, task=dataset)
    alone = config.model_copy(update={"data": config.data.model_copy(update={"root": str(out / "data" / folder)})})
    return validate(alone, split="test", output=output, compare_base=True)


def prepare_output(out: Path, overwrite: bool) -> Path:
    """An empty output folder; an earlier demo's folder only with ``overwrite``."""
    if out.exists() and any(out.iterdir()):
        if not (out / "summary.json").exists() and not (out / "run").exists():
            raise DemoError(f"{out}: folder exists and is not a demo's; give a new or empty folder",
                            option="output")
        if not overwrite:
            raise DemoError(f"{out}: an earlier demo is there; replace it, or give another output folder",
                            option="overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def make_data(folder: Path, budget: Budget, seed: int, target: dict | None = None) -> None:
    """The target-domain dataset (``TARGET`` unless given) and the base-concept one: its
    train and valid splits replayed (``data_overrides``), its test split held out."""
    test = budget.test_images
    synthesize(folder / DATA_FOLDERS[TARGET_TASK], **{**SHAPE_STYLE, **(target or TARGET)}, seed=seed,
               images_per_split={"train": budget.train_images, "valid": test // 2, "test": test})
    # Seed far from the base's training seed (0): these images were never seen in training.
    # Each split draws from its own (seed, split, index): a valid split leaves train and test as they were.
    synthesize(folder / DATA_FOLDERS[REPLAY_TASK], **BASE_CONCEPTS, **SHAPE_STYLE, seed=seed + 1000,
               images_per_split={"train": budget.replay_images, "valid": test // 2, "test": test})


def _pick(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in METRICS}


def write_overlays(config: Config, out: Path, count: int, scale: int = 3) -> list[Path]:
    """Base and fine-tuned predictions on the first ``count`` target test images, side by
    side, enlarged ``scale`` times (the images are 112 px) so that labels stay legible."""
    split = load_coco_split(out / "data" / "target" / "test", config.data.annotation_file, name="test")
    threshold = OVERLAY_THRESHOLD
    # One model in memory: the adapter's answers, and the base's with the adapter switched off.
    engine = SAM3LoRAInference(config=config, weights_path=out / "run" / "best", detection_threshold=threshold)
    titles = ("base model", "fine-tuned (LoRA)")
    (out / "overlays").mkdir(exist_ok=True)
    written = []
    for record in split.images[:count]:
        prompts = sorted({split.categories[o.category_id] for o in record.objects})
        image = Image.open(record.path).convert("RGB")
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        with engine.base_model():
            base = engine.predict(image, prompts)
        panels = [draw_overlay(image, answer) for answer in (base, engine.predict(image, prompts))]
        header = 20
        both = Image.new("RGB", (sum(p.width for p in panels), header + max(p.height for p in panels)), "white")
        draw = ImageDraw.Draw(both)
        for index, (title, panel) in enumerate(zip(titles, panels, strict=True)):
            both.paste(panel, (index * panel.width, header))
            draw.text((index * panel.width + 4, 4), f"{title}, scores >= {threshold}", fill="black")
        path = out / "overlays" / f"{Path(record.file_name).stem}-base-vs-finetuned.png"
        both.save(path)
        written.append(path)
    return written


def format_summary(summary: dict) -> str:
    """The before/after table the demo prints."""
    base, tuned = summary["base"], summary["finetuned"]
    concepts = summary["base_concepts"]
    width = 28
    lines = [table_header(width),
             *(change_row(f"target {key}", base[key], tuned[key], width)
               for key in ("mAP", "mAP50", "cgF1", "presence_AUC")),
             *(change_row(f"base concepts {key}", concepts["base"][key], concepts["finetuned"][key], width)
               for key in ("mAP", "cgF1")),
             ""]
    forgetting = summary.get("forgetting") or {}
    if forgetting.get("matched_mask_iou") is not None:
        lines.append(f"forgetting check on {forgetting['images']} base-concept images: masks of matched "
                     f"detections overlap the base's at IoU {forgetting['matched_mask_iou']:.2f}, presence "
                     f"shift {forgetting['presence_shift']:+.3f}")
    lines.append(f"done in {summary['seconds']:.0f} s; report {summary['report']}, overlays in "
                 f"{Path(summary['output']) / 'overlays'}, numbers in {Path(summary['output']) / 'summary.json'}")
    return "\n".join(lines)


def table_header(width: int) -> str:
    """The head of a demo's before/after table whose labels are ``width`` characters."""
    return f"{'':<{width}}{'base':>8}{'fine-tuned':>12}{'change':>9}"


def change_row(label: str, old: float | None, new: float | None, width: int) -> str:
    """A row of a demo's before/after table: ``label`` in ``width`` characters, the base's
    value, the fine-tuned model's and the change, to 3 decimals ("n/a" where one is missing)."""
    cells = ["n/a" if v is None else f"{round(v, 3) + 0.0:.3f}" for v in (old, new)]   # + 0.0: no "-0.000"
    change = "n/a" if old is None or new is None else f"{round(new - old, 3) + 0.0:+.3f}"
    return f"{label:<{width}}{cells[0]:>8}{cells[1]:>12}{change:>9}"


def _describe(spec: dict) -> str:
    things = (", ".join(spec["concepts"]) if spec.get("concepts")
              else f"{'/'.join(spec['shapes'])} in {len(spec['colors'])} colours")
    return f"{things} on {'/'.join(spec['background'])}"
