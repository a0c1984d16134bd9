"""Where one LoRA training step's memory goes: what autograd keeps for backward, per module.

    python bench/memory_by_module.py [--model sam3] [--image-size 1008] [--preset heads]
        [--quantize none|nf4] [--checkpointing on|off] [--cache-features] [--queries 4] [--top 15]

One step as ``bench_steps.py`` runs it (a bfloat16 base under bf16 autocast, the preset's LoRA,
SAM3's loss, AdamW's state already there), on the CPU. Reported: the process's RSS before the
step, its peak during forward and loss, held after them, and its peak during backward; then the
tensors autograd saved for backward, each storage counted once, summed by the module that was
running when it was saved (three levels deep: ``detr_decoder.box_rpb_embed_x.layer2``). A
recomputed (checkpointed) layer keeps only its inputs, which its checkpoint saves outside this
count. The process re-runs itself with glibc's mmap threshold fixed, as the benchmarks' children
do (``bench_train.child_environment``), so that RSS follows the tensors alive.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time

import torch
from bench_steps import build, prime_optimizer, reset_peak_memory, rss_gb, synthetic_batch
from bench_train import child_environment


@contextlib.contextmanager
def saved_by_module(model: torch.nn.Module):
    """Yields ``totals``: inside the context, every tensor autograd saves is added to
    ``totals[module name]`` (bytes of its storage, once per storage); the hooks go on exit."""
    names = {module: name for name, module in model.named_modules()}
    running: list[str] = []

    def enter(module, args) -> None:
        running.append(names[module])

    def leave(module, args, output) -> None:   # None: the output stays as it is
        running.pop()

    totals: dict[str, int] = collections.defaultdict(int)
    seen: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            parts = [p for p in (running[-1] if running else "(outside any module)").split(".")
                     if p not in ("base_model", "model")]   # PEFT's wrappers
            totals[".".join(parts[:3])] += storage.nbytes()
        return tensor

    handles = [hook for module in model.modules()
               for hook in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield totals
    finally:
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam3", help="preset (sam3, sam3-tiny), folder or hub id")
    parser.add_argument("--image-size", type=int, default=1008)
    parser.add_argument("--preset", default="heads", help="LoRA preset (or config file)")
    parser.add_argument("--quantize", default="none", help="model.quantize of the base")
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on")
    parser.add_argument("--cache-features", action="store_true",
                        help="the vision features from a cache filled before the step (data.cache_features)")
    parser.add_argument("--queries", type=int, default=4, help="text queries per image")
    parser.add_argument("--top", type=int, default=15, help="modules listed")
    args = parser.parse_args()
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], child_environment())

    from sam3_lora.config import load_config
    from sam3_lora.lora.apply import apply_lora_to_model
    from sam3_lora.loss.criterion import build_criterion
    from sam3_lora.model.forward import as_float32, forward_queries
    from sam3_lora.training.features import FeatureCache
    from sam3_lora.training.optim import param_groups
    from sam3_lora.training.resources import enable_activation_checkpointing

    device = torch.device("cpu")
    loaded = build(args.model, args.image_size, "bfloat16", device, args.quantize)
    config = load_config(args.preset)
    model = apply_lora_to_model(loaded.model, config.lora, verbose=False).train()
    enable_activation_checkpointing(model, every=1 if args.checkpointing == "on" else 0)
    train = config.training
    optimizer = torch.optim.AdamW(param_groups(model, train.learning_rate, train.weight_decay,
                                               train.component_learning_rates), lr=train.learning_rate)
    prime_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
    criterion = build_criterion(config.loss)
    pixels, image_index, text, targets = synthetic_batch(loaded.processor, 1, args.queries, device)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    cache = FeatureCache(budget=2**62) if args.cache_features else None
    if cache:
        with autocast:
            cache.encode(model, pixels, ["image"])
    reset_peak_memory(device)
    before, started = rss_gb("VmRSS"), time.perf_counter()
    with saved_by_module(model) as totals:   # the loss's own saved tensors count as "(outside any module)"
        with autocast:
            vision = cache.encode(model, pixels, ["image"]) if cache else None
            out = forward_queries(model, image_index, pixel_values=None if cache else pixels, vision=vision,
                                  aux_outputs=True, **text)
        loss = criterion(as_float32(out), targets)["loss"]
    forward_peak, held = rss_gb("VmHWM"), rss_gb("VmRSS")
    reset_peak_memory(device)
    loss.backward()
    backward_peak = rss_gb("VmHWM")

    cached = ", cached vision features" if cache else ""
    print(f"{args.model} at {loaded.processor.image_size} px, {args.preset}, base {args.quantize} (bfloat16), "
          f"checkpointing {args.checkpointing}{cached}, {args.queries} text queries "
          f"({time.perf_counter() - started:.0f} s)")
    print(f"RSS before the step {before:.2f} GB; forward and loss: peak {forward_peak:.2f} GB, held after "
          f"{held:.2f} GB; backward: peak {backward_peak:.2f} GB")
    print(f"saved for backward: {sum(totals.values()) / 2**30:.2f} GB\n\n| module | saved |\n|---|---:|")
    for name, size in sorted(totals.items(), key=lambda item: -item[1])[:args.top]:
        print(f"| {name} | {size / 2**20:,.1f} MB |")


if __name__ == "__main__":
    main()
