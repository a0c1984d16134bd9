"""bfloat16 against float32: the same weights, held and run in each, scored and compared.

1. Held-out quality: the bundled base (``sam3-tiny-shapes``, read by name: whatever weights
   ship) on its held-out test split (the synthetic base concepts, seed 0, as
   ``configs/base.yaml`` made them), every concept prompted on every image as ``validate``
   does: mAP, mAP@50, cgF1 and presence ROC-AUC with ``model.dtype`` float32 and bfloat16.
2. Output agreement on one model (``--model``): for the bundled base, its first held-out image
   and its first ``--prompts`` concepts; for others (random weights), random pixels and
   ``--prompts`` made-up prompts: the largest difference of query logits, presence logits and boxes,
   and the IoU of the binary masks of each prompt's 5 best queries (by float32 score; two
   empty masks agree: IoU 1).

Runs on the GPU when CUDA is available, else on the CPU.

    python bench/bench_precision.py [--images 150] [--model sam3-tiny-shapes] [--image-size N]
        [--prompts 4] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine import append_entry, machine  # bench/machine.py (scripts run from bench/)

REPO = Path(__file__).resolve().parents[1]
HEADING = "## bfloat16 against float32"
METRICS = ("mAP", "mAP50", "cgF1", "presence_AUC")


def held_out_split(folder: Path, images: int) -> Path:
    """The bundled base's held-out test split (its concepts and style, seed 0) in ``folder``."""
    from sam3_lora.data.synth import synthesize
    from sam3_lora.recipes.demo import BASE_CONCEPTS, SHAPE_STYLE

    synthesize(folder, **BASE_CONCEPTS, **SHAPE_STYLE, seed=0, images_per_split={"test": images})
    return folder


def split_scores(root: Path, dtype: str, device: torch.device, images: int | None = None) -> dict:
    """The bundled base in ``dtype`` on ``root``'s test split: mAP, mAP@50, cgF1, presence AUC."""
    from sam3_lora.config import load_config
    from sam3_lora.data.coco.split import load_coco_split
    from sam3_lora.evaluation.runner import SplitRunner, presence_auc, score
    from sam3_lora.lora.weights import load_finetuned
    from sam3_lora.recipes.demo import BASE_MODEL

    config = load_config("demo", [f"model.source={BASE_MODEL}", f"data.root={root}", f"model.dtype={dtype}",
                                  "training.batch_size=16"])
    model, processor, _ = load_finetuned(config, no_lora=True, device=device)
    split = load_coco_split(root / "test", config.data.annotation_file, name="test")
    runner = SplitRunner(model, processor, split, config, images)
    found = runner.predict(with_loss=False)
    metrics, _ = score(runner.ground_truth(), found.results, config.evaluation.score_threshold)
    return {**{k: metrics[k] for k in METRICS[:3]}, "presence_AUC": presence_auc(found.units),
            "images": len(runner.image_ids)}


def held_out_agreement(images: int, device: torch.device) -> dict:
    """{float32: scores, bfloat16: scores, delta: bf16 - fp32 per metric} on the held-out split."""
    with tempfile.TemporaryDirectory() as tmp:
        root = held_out_split(Path(tmp), images)
        found = {dtype: split_scores(root, dtype, device) for dtype in ("float32", "bfloat16")}
    found["delta"] = {k: found["bfloat16"][k] - found["float32"][k] for k in METRICS
                      if found["float32"][k] is not None and found["bfloat16"][k] is not None}
    return found


@torch.no_grad()
def output_agreement(model, processor, prompts: int, top_k: int = 5, image=None) -> dict:
    """``image`` (default: random pixels) and ``prompts`` prompts through ``model`` as loaded, then cast to
    bfloat16 (the same weights, rounded): the largest output differences, and the IoU of the
    binary masks of each prompt's ``top_k`` queries (by float32 score). ``model`` is left in
    bfloat16."""
    from sam3_lora.model.forward import forward_queries
    from sam3_lora.model.postprocess import query_scores

    device = next(model.parameters()).device
    size = processor.image_size
    if image is None:
        pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    else:
        pixels = processor.images([image])
    pixels = pixels.to(device)
    names = [f"object {i}" for i in range(prompts)] if isinstance(prompts, int) else list(prompts)
    prompts = len(names)
    text = {k: v.to(device) for k, v in processor.text(names).items()}
    index = torch.zeros(prompts, dtype=torch.long, device=device)
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        found = forward_queries(model, index, pixel_values=pixels, **text)
        outputs[dtype] = {k: v.float() for k, v in found.items()}
    full, half = outputs[torch.float32], outputs[torch.bfloat16]
    top = query_scores(full["pred_logits"], full["presence_logits"]).topk(min(top_k, full["pred_logits"].shape[1]))
    rows = torch.arange(prompts, device=device)[:, None]
    a, b = full["pred_masks"][rows, top.indices] > 0, half["pred_masks"][rows, top.indices] > 0
    union = (a | b).flatten(2).sum(2)
    ious = ((a & b).flatten(2).sum(2) / union.clamp(min=1)).where(union > 0, 1.0).flatten().cpu().numpy()
    return {"prompts": prompts, "max_logit_diff": (full["pred_logits"] - half["pred_logits"]).abs().max().item(),
            "max_presence_diff": (full["presence_logits"] - half["presence_logits"]).abs().max().item(),
            "max_box_diff": (full["pred_boxes"] - half["pred_boxes"]).abs().max().item(),
            "masks_compared": len(ious), "masks_empty_in_both": int((union == 0).sum()),
            "mean_mask_iou": float(np.mean(ious)), "min_mask_iou": float(np.min(ious))}


def held_out_table(found: dict) -> str:
    lines = ["| model.dtype | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for dtype in ("float32", "bfloat16"):
        lines.append(f"| {dtype} | " + " | ".join(_num(found[dtype][k]) for k in METRICS) + " |")
    lines.append("| bf16 - fp32 | " + " | ".join(f"{found['delta'][k]:+.4f}" if k in found["delta"] else "-"
                                                  for k in METRICS) + " |")
    return "\n".join(lines)


def agreement_line(found: dict) -> str:
    iou = (f"mask IoU {found['mean_mask_iou']:.3f} mean, {found['min_mask_iou']:.3f} min over "
           f"{found['masks_compared']} masks (each prompt's 5 best queries; {found['masks_empty_in_both']} "
           f"empty in both, counted as 1)")
    return (f"largest difference: query logits {found['max_logit_diff']:.2g}, presence logits "
            f"{found['max_presence_diff']:.2g}, boxes {found['max_box_diff']:.2g} (of [0, 1]); {iou}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    from PIL import Image

    from sam3_lora.model.loading import bundled_concepts, load_sam3
    from sam3_lora.recipes.demo import BASE_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150, help="held-out images (the base's test split has 150)")
    parser.add_argument("--model", default="sam3-tiny-shapes", help="model of the output agreement")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--write", action="store_true", help=f"append the results under {HEADING!r} in BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    held_out = held_out_agreement(args.images, device)
    loaded = load_sam3(args.model, image_size=args.image_size)
    if args.model == BASE_MODEL:   # a held-out image and the base's own concepts: masks to compare
        with tempfile.TemporaryDirectory() as tmp:
            image = Image.open(min((held_out_split(Path(tmp), 1) / "test").glob("*.png"))).convert("RGB")
        prompts, what = bundled_concepts(BASE_MODEL)[:args.prompts], "its first held-out image and concepts"
    else:
        image, prompts, what = None, args.prompts, "one random image"
    outputs = output_agreement(loaded.model.to(device).eval(), loaded.processor, prompts, image=image)
    text = (f"Held-out split of the bundled base ({held_out['float32']['images']} images, every concept "
            f"prompted on every image):\n\n{held_out_table(held_out)}\n\n"
            f"Outputs of `{args.model}` at {loaded.processor.image_size} px, {what}, "
            f"{outputs['prompts']} prompts, bf16 vs fp32: {agreement_line(outputs)}.")
    print(text)
    if args.write:
        entry = (f"\n### {datetime.date.today().isoformat()}: on {device.type}\n\nMachine: {machine()}.  \n"
                 f"Command: `python bench/bench_precision.py {shlex.join(sys.argv[1:])}`\n\n{text}\n")
        append_entry(HEADING, entry, REPO / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
