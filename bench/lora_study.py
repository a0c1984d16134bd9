"""The LoRA study: which preset to pick, measured on the demo's target task.

On the bundled tiny base (``sam3-tiny-shapes``) and the demo's target domain (new shapes on a
new background; ``sam3_lora.recipes.demo``), each variant is trained with the same data, steps and
seed, then scored on the held-out target test split and on held-out images of the base's own
concepts (retention). Variants:

    base (zero-shot)            no training
    minimal / balanced / full   LoRA with each preset's rank (4 / 16 / 32) and component choice
    balanced + text encoder     the balanced preset with the text encoder adapted as well
    full fine-tuning            every weight (training.method=full)

Reported per variant: target mAP and cgF1, base-concept mAP, trainable parameters, adapter
size on disk, seconds per step and peak memory of the training process so far (RSS on CPU).

    python bench/lora_study.py --scale tiny|cpu-full|gpu [--write]

``tiny`` uses the demo's quick budget; the other scales its full budget (the base is tiny
either way: the study's point is the comparison, on any machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import append_entry, machine
from run_folder import adapter_mb, seconds_per_step

from sam3_lora.config import load_config
from sam3_lora.recipes.demo import (
    BUDGETS,
    REPLAY_TASK,
    TARGET_TASK,
    Budget,
    data_overrides,
    make_data,
)

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## The LoRA study: which preset to pick"
# name -> overrides of the demo config (None: no training, the base alone)
VARIANTS: dict[str, list[str] | None] = {
    "base (zero-shot)": None,
    "demo (r4, text encoder, no vision encoder)": [],
    "minimal (r4)": ["preset=minimal"],
    "balanced (r16)": ["preset=balanced"],
    "full (r32)": ["preset=full"],
    "balanced (r16) + text encoder": ["preset=balanced", "lora.apply_to_text_encoder=true"],
    "full fine-tuning": ["training.method=full", "training.learning_rate=1e-3"],
}


def study_config(data: Path, run: Path, budget: Budget, overrides: list[str]):
    """The demo's config on its data (``data_overrides``: the target and the replay), with a
    preset's whole ``lora`` section (``preset=NAME``) and then the other overrides."""
    presets = [o.split("=", 1)[1] for o in overrides if o.startswith("preset=")]
    lora = [f"lora.{key}={json.dumps(value)}" for name in presets
            for key, value in load_config(name).lora.model_dump(mode="json").items()]
    rest = [o for o in overrides if not o.startswith("preset=")]
    # No feature cache: most variants train the vision encoder, and their speeds are compared.
    return load_config("demo", [*data_overrides(data, budget), f"output.dir={run}", "data.cache_features=off",
                                f"training.max_steps={budget.steps}", *lora, *rest])


def run_variant(name: str, overrides: list[str] | None, data: Path, work: Path, budget: Budget) -> dict:
    from sam3_lora.recipes.train import SAM3LoRATrainer
    from sam3_lora.recipes.validate import validate

    run = work / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    config = study_config(data, run, budget, overrides or [])
    row = {"variant": name}
    weights = {"no_lora": True}
    if overrides is not None:
        summary = SAM3LoRATrainer(config, quiet=True).train()
        row.update(trainable=summary["trainable_parameters"], peak_memory_mb=summary["peak_memory_mb"],
                   s_per_step=seconds_per_step(run, config.training.batch_size), size_mb=adapter_mb(run / "best"))
        weights = {"weights": run / "best"}
    # The demo's two datasets (the target, the replayed base concepts): each one's test split.
    target = validate(config, split="test", output=run / "eval-target", task=TARGET_TASK, **weights)
    retained = validate(config, split="test", output=run / "eval-base", task=REPLAY_TASK, **weights)
    row.update(mAP=target["mAP"], cgF1=target["cgF1"], base_mAP=retained["mAP"])
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    def cell(value, form):
        return "-" if value is None else form.format(round(value, 3) + 0.0)   # no "-0.000"

    lines = ["| variant | target mAP | target cgF1 | base-concept mAP | trainable | on disk | s/step | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {cell(r['mAP'], '{:.3f}')} | {cell(r['cgF1'], '{:.3f}')} | "
                     f"{cell(r['base_mAP'], '{:.3f}')} | {cell(r.get('trainable'), '{:,.0f}')} | "
                     f"{cell(r.get('size_mb'), '{:.2f} MB')} | {cell(r.get('s_per_step'), '{:.3f}')} | "
                     f"{cell(r.get('peak_memory_mb'), '{:.0f} MB')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Target mAP against base-concept mAP, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        axes.scatter(r["base_mAP"], r["mAP"], s=40)
        label = r["variant"] + (f"\n{r['trainable']:,} params" if r.get("trainable") else "")
        axes.annotate(label, (r["base_mAP"], r["mAP"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel("base-concept mAP (retention; higher = less forgetting)")
    axes.set_ylabel("target-domain mAP (held-out)")
    axes.set_title("LoRA study on the tiny base: learning vs forgetting")
    axes.grid(alpha=0.3)
    axes.margins(x=0.15, y=0.15)   # room for the labels
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "cpu-full", "gpu"], default="cpu-full")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--write", action="store_true", help="record the table and plot in BENCHMARKS.md")
    args = parser.parse_args()
    budget = BUDGETS["quick" if args.scale == "tiny" else "full"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        make_data(work / "data", budget, seed=0)
        for name, overrides in VARIANTS.items():
            if not args.only or name in args.only:
                rows.append(run_variant(name, overrides, work / "data", work / "runs", budget))
    text = table(rows)
    print(text)
    if args.write:
        plot(rows, ROOT / "docs" / "lora_study.png")
        entry = (f"\n### {date.today()}: {budget.train_images} target images, {budget.steps} steps, seed 0\n\n"
                 f"Command: `python bench/lora_study.py --scale {args.scale} --write`  \nMachine: {machine()}\n\n"
                 f"{text}\n\n![LoRA study](docs/lora_study.png)\n")
        append_entry(HEADING, entry)


if __name__ == "__main__":
    main()
