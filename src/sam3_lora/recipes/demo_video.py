"""``sam3-lora demo --task video``: the video tracker's loop on the bundled base, on a CPU.

The same four stages as the concept and interactive demos (``recipes.demo``), for tracking:
objects given as masks on a clip's first frame, followed to its end through the memory.

1. data     clips of a target domain where the base's tracker loses its objects (``TARGET``:
            the base's motion, look-alike and occlusion, but shapes, colours and a background
            it never saw), and clips of its own domain: replayed in training and a held-out
            set for the drop
2. train    LoRA on the video tracker's ViT, memory attention, memory encoder and mask decoder
            (``configs/demo-video.yaml``), SAM 2's clip training, on two datasets of one run
            (``data.datasets``: ``target`` and ``replay``, as the other demos)
3. score    the base and the fine-tuned tracker by DAVIS's semi-supervised protocol (J, F,
            J&F: ``validate`` with ``compare_base``), on the target, then on the own domain
4. show     frames of a target test clip: the ground truth, the base's masks, the fine-tuned
            tracker's (``strips/``)

Output folder (``--output``, default ``runs/demo-video``)::

    data/target/             the target-domain clips (train/valid/test, DAVIS layout)
    data/base-concepts/      clips of the base's own domain: train/ and valid/ (the replay
                             dataset's), test/ (held out: the drop)
    run/                     the training run (adapters in best/ and last/)
    eval/target/             report.md (base vs fine-tuned, J&F per sequence), metrics.json
    eval/base-concepts/      the same on the base's own domain
    strips/                  a test clip's frames: ground truth, base, fine-tuned
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
from sam3_lora.data.video.layout import VideoSequence, load_video_split
from sam3_lora.data.video.synth import DEFAULT_SPEED, synthesize_video
from sam3_lora.files import write_file
from sam3_lora.lora.weights import adapter_disabled, load_finetuned
from sam3_lora.model.video import check_video_source
from sam3_lora.recipes.demo import (
    DATA_FOLDERS,
    REPLAY_TASK,
    TARGET_TASK,
    Budget,
    change_row,
    demo_config,
    one_thread,
    prepare_output,
    score_split,
    table_header,
)
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.recipes.validate_video import tracker
from sam3_lora.serve.overlay import draw_masks, prompt_color, write_png

PRESET = "demo-video"
# The base's own domain, as its memory was trained (the bundled base's clips: ``synthesize_video``'s
# defaults with its four colours and two backgrounds): objects moving 2-6 % of the frame's side
# per frame, one look-alike of object 1, occlusion at mid-clip, an object entering and leaving.
BASE_DOMAIN = {"colors": ("red", "green", "blue", "yellow"), "shapes": ("circle", "square", "triangle"),
               "background": ("plain", "noise")}
# The target keeps how things move (the base's speeds, one look-alike, the occlusion) and
# changes what they look like: purple, magenta and orange stars, crosses and hexagons on a
# checker background full of edges (the interactive demo's look). A frame after the first has
# no prompt, so the tracker must find the object from memory and its own idea of an object:
# on these it loses them (J&F 0.20 against 0.44 on its own clips). Fast motion (10-16 % of the
# side per frame among two look-alikes) was tried first: the base drifts there too (0.27), but
# 60 LoRA steps did not help (-0.04: BENCHMARKS, "The video demo").
TARGET = {"colors": ("purple", "magenta", "orange"), "shapes": ("star", "cross", "hexagon"),
          "background": ("checker",)}
CLIP_STYLE = {"image_size": 112, "frames": 12}   # as the base's clips
METRICS = ("J", "F", "J&F")
# Budget counts clips here (train_images: target training clips, replay_images: replayed ones).
# Sized by time on the bundled video base, one thread of the 2-core CI machine: a training step
# of 2 clips of 4 frames about 1.2 s, a scored 12-frame clip about 1.2 s a model (each test
# clip is scored twice: base and fine-tuned). Measured figures: BENCHMARKS.md, "The video demo".
BUDGETS = {"full": Budget(train_images=80, test_images=10, steps=300, replay_images=80),
           "quick": Budget(train_images=18, test_images=4, steps=100, replay_images=18)}
VALID_CLIPS = 1   # per dataset: the validation loss (best/) costs a tracker pass per clip
SHOWN_FRAMES = 6
STRIP_SCALE = 2   # the frames are 112 px: enlarged so that the masks' outlines stay legible


def run_video_demo(output: str | Path = "runs/demo-video", *, quick: bool = False, overwrite: bool = False,
                   overrides: list[str] | None = None, seed: int = 0, say=lambda line: None,
                   target: dict | None = None, budget: Budget | None = None,
                   clip_style: dict | None = None) -> dict:
    """Run the video demo into ``output``; returns the summary (also summary.json).
    Arguments as ``recipes.demo.run_demo``'s (``target``: ``synthesize_video`` arguments);
    ``clip_style`` replaces both domains' ``CLIP_STYLE`` (frame size and clip length)."""
    with one_thread():
        return _run(output, quick, overwrite, overrides, seed, say, target, budget, clip_style or CLIP_STYLE)


def _run(output, quick, overwrite, overrides, seed, say, target, budget, clip_style) -> dict:
    started = time.perf_counter()
    out = prepare_output(Path(output), overwrite)
    budget = budget or BUDGETS["quick" if quick else "full"]
    target = target or TARGET
    config = demo_config(PRESET, out, budget, seed, overrides)
    # Before the clips are made: a base whose tracker cannot run on video (the tiny presets,
    # 32 and 64 wide) is refused in one line, leaving the folder empty.
    check_video_source(config.model.source, False, config.model.revision, width=config.model.tracker_width)
    say(f"[1/4] data: target clips ({_describe(target)}) and clips of the base's own domain, in {out / 'data'}")
    make_clips(out / "data", budget, seed, target, clip_style)

    say(f"[2/4] train: LoRA on {config.model.source}'s video tracker, {budget.steps} steps on {budget.train_images} "
        f"target clips and {budget.replay_images} replayed own-domain clips, {config.data.clip_frames} frames each")
    trained = SAM3LoRATrainer(config).train()

    say("[3/4] score: the base and the fine-tuned tracker (J, F, J&F), on the target, then on the own domain")
    after = score_split(config, out, TARGET_TASK)
    retained = score_split(config, out, REPLAY_TASK)

    say(f"[4/4] show: a target test clip, base and fine-tuned, in {out / 'strips'}")
    strip = write_frame_strip(config, out, after)
    summary = {
        "base": _pick(after["base"]), "finetuned": _pick(after),
        "base_concepts": {"base": _pick(retained["base"]), "finetuned": _pick(retained)},
        "task": "video", "target_domain": target, "base_model": config.model.source, "quick": quick,
        "train_steps": trained["steps"], "trainable_parameters": trained["trainable_parameters"],
        "seconds": round(time.perf_counter() - started, 1), "output": str(out),
        "report": str(out / "eval" / "target" / "report.md"), "strip": str(strip),
    }
    write_file(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    say(format_video_summary(summary))
    return summary


def make_clips(folder: Path, budget: Budget, seed: int, target: dict | None = None,
               clip_style: dict | None = None) -> None:
    """The target's clips (``TARGET`` unless given) and the base domain's, both in
    ``clip_style`` (``CLIP_STYLE`` unless given): the base domain's train and valid splits
    replayed (``recipes.demo.data_overrides``), its test split held out."""
    splits = {"valid": VALID_CLIPS, "test": budget.test_images}
    style = clip_style or CLIP_STYLE
    synthesize_video(folder / DATA_FOLDERS[TARGET_TASK], **{**style, **(target or TARGET)}, seed=seed,
                     sequences_per_split={"train": budget.train_images, **splits})
    # Seed far from the base's training seed (0): these clips were never seen in training.
    synthesize_video(folder / DATA_FOLDERS[REPLAY_TASK], **BASE_DOMAIN, **style, seed=seed + 1000,
                     sequences_per_split={**({"train": budget.replay_images} if budget.replay_images else {}),
                                          **splits})


def _pick(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in METRICS}


def write_frame_strip(config: Config, out: Path, scored: dict) -> Path:
    """The first target test clip's frames (``SHOWN_FRAMES`` of them, first and last included)
    in three rows: its ground truth, the base's masks, the fine-tuned tracker's, each object
    in its own colour (the look-alikes are no object: untinted), each row titled with the
    clip's J&F (``scored``: the target's metrics, the base's under "base")."""
    sequence = load_video_split(out / "data" / DATA_FOLDERS[TARGET_TASK] / "test").sequences[0]
    model, processor, _ = load_finetuned(config, out / "run" / "best")
    rows = [("ground truth", _truth(sequence))]
    for title, disabled, metrics in (("base model", True, scored["base"]), ("fine-tuned (LoRA)", False, scored)):
        with adapter_disabled(model, disabled), torch.no_grad():
            masks = tracker(model, processor)(sequence)
        rows.append((f"{title}: J&F {metrics['per_sequence'][sequence.name]['J&F']:.2f}", masks))
    (out / "strips").mkdir(exist_ok=True)
    path = out / "strips" / f"{sequence.name}-base-vs-finetuned.png"
    return write_png(frame_strip(sequence, rows), path)


def _truth(sequence: VideoSequence) -> np.ndarray:
    """(O, T, H, W) bool: the sequence's objects on every frame (ids ascending)."""
    ids = np.array(list(sequence.objects))
    return np.stack([sequence.mask(t)[None] == ids[:, None, None] for t in range(len(sequence.frame_paths))], 1)


def frame_strip(sequence: VideoSequence, rows: list[tuple[str, np.ndarray]], count: int = SHOWN_FRAMES,
                scale: int = STRIP_SCALE) -> Image.Image:
    """One row per (title, (O, T, H, W) masks), ``count`` evenly spaced frames a row, each
    enlarged ``scale`` times with object o tinted ``prompt_color(o)``."""
    frames = np.unique(np.linspace(0, len(sequence.frame_paths) - 1, count).round().astype(int))
    width, height = (side * scale for side in sequence.size)
    header = 16
    strip = Image.new("RGB", (len(frames) * width, len(rows) * (height + header)), "white")
    draw = ImageDraw.Draw(strip)
    for row, (title, masks) in enumerate(rows):
        top = row * (height + header)
        draw.text((4, top + 2), title, fill="black")
        for column, t in enumerate(frames):
            canvas = np.asarray(sequence.frame(int(t)).convert("RGB"), dtype=np.float32)
            for index, mask in enumerate(masks[:, t]):
                draw_masks(canvas, mask[None], prompt_color(index), line=1)
            shown = Image.fromarray(canvas.round().astype(np.uint8)).resize((width, height), Image.NEAREST)
            strip.paste(shown, (column * width, top + header))
            draw.text((column * width + width - 40, top + 2), f"frame {t}", fill="black")
    return strip


def format_video_summary(summary: dict) -> str:
    """The before/after table the video demo prints."""
    base, tuned, own = summary["base"], summary["finetuned"], summary["base_concepts"]
    width = 22
    lines = [table_header(width),
             *(change_row(f"target {key}", base[key], tuned[key], width) for key in METRICS),
             *(change_row(f"own domain {key}", own["base"][key], own["finetuned"][key], width) for key in METRICS),
             "",
             (f"done in {summary['seconds']:.0f} s; report {summary['report']}, frames in {summary['strip']}, "
              f"numbers in {Path(summary['output']) / 'summary.json'}")]
    return "\n".join(lines)


def _describe(spec: dict) -> str:
    low, high = spec.get("speed_range", DEFAULT_SPEED)
    return (f"{'/'.join(spec['shapes'])} in {len(spec['colors'])} colours moving {low:.0%}-{high:.0%} of the frame "
            f"a frame, {spec.get('look_alikes', 1)} look-alikes of object 1")
