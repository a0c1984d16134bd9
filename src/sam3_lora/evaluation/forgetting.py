"""The label-free forgetting check: did the adapter move the model's answers to prompts
outside its domain?

The base model's own confident detections are the reference: the adapted model (adapter
on) and the base (adapter off) answer the same out-of-domain ``retain_prompts`` on the same
images, and the check reports how far apart the answers are.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sam3_lora.data.images import open_image
from sam3_lora.data.rle import encode
from sam3_lora.evaluation.results import mask_ious
from sam3_lora.evaluation.runner import SplitRunner
from sam3_lora.lora.weights import adapter_disabled, has_adapter
from sam3_lora.model.forward import forward_queries
from sam3_lora.model.postprocess import Detections, postprocess


def matched_ious(adapted: Detections, base: Detections) -> list[float]:
    """IoUs of the one-to-one best matching between two detection sets' masks."""
    if not len(adapted) or not len(base):
        return []
    ious = mask_ious([encode(m) for m in adapted.masks], [encode(m) for m in base.masks])
    rows, cols = linear_sum_assignment(-ious)
    return ious[rows, cols].tolist()


def summarise(pairs: list[tuple[Detections, Detections]], ious: list[float]) -> dict:
    """Mean matched IoU, detections per unit with and without the adapter, presence shift."""
    adapted = [len(a) for a, _ in pairs]
    base = [len(b) for _, b in pairs]
    return {
        "matched_mask_iou": float(np.mean(ious)) if ious else None,
        "detections_base": float(np.mean(base)), "detections_adapted": float(np.mean(adapted)),
        "detection_change": float(np.mean(adapted) - np.mean(base)),
        "presence_shift": float(np.mean([a.presence - b.presence for a, b in pairs])),
    }


@torch.no_grad()
def forgetting_check(runner: SplitRunner) -> dict:
    """How far the adapted model's answers to out-of-domain prompts moved from the base's.

    Reports the mean mask IoU of matched detections, the change in detections per (image,
    prompt), and the shift of the presence probability, overall and per prompt. Empty when
    there are no ``retain_prompts``, no ``retain_images`` or no adapter.
    """
    cfg = runner.config.evaluation
    prompts = cfg.retain_prompts
    if not prompts or not has_adapter(runner.model) or not cfg.retain_images:
        return {}
    text = {k: v.to(runner.device) for k, v in runner.processor.text(prompts).items()}
    index = torch.zeros(len(prompts), dtype=torch.long, device=runner.device)
    pairs: dict[str, list] = {p: [] for p in prompts}
    ious: dict[str, list] = {p: [] for p in prompts}
    for record in list(runner.records.values())[:cfg.retain_images]:
        pixels = runner.processor.images([open_image(record.path)]).to(runner.device)
        answers = []
        for base in (False, True):
            with adapter_disabled(runner.model, base):
                outputs = forward_queries(runner.model, index, pixel_values=pixels, **text)
            answers.append(postprocess(outputs, [(record.height, record.width)] * len(prompts),
                                       threshold=cfg.score_threshold))
        for prompt, adapted, base in zip(prompts, *answers, strict=True):
            pairs[prompt].append((adapted, base))
            ious[prompt] += matched_ious(adapted, base)
    every_pair = [pair for p in prompts for pair in pairs[p]]
    return {"retain_prompts": list(prompts), "images": len(pairs[prompts[0]]),
            **summarise(every_pair, [i for p in prompts for i in ious[p]]),
            "per_prompt": {p: summarise(pairs[p], ious[p]) for p in prompts}}
