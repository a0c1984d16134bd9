"""The PEFT methods study: which ``lora.method`` learns a new domain best for its parameters.

On the bundled tiny base (``sam3-tiny-shapes``) and the concept demo's recipe
(``sam3_lora.recipes.demo``: its config, data, replay and scoring), each method of
``lora.method`` trains on a target domain with the same data, steps and seed, its size matched
to the demo's LoRA (rank 4): the rank whose trainable parameters come closest to LoRA's
without exceeding them (``match_rank``; a method that cannot reach them says so). Two target
domains: the demo's (``TARGET``) and a second one (``SECOND_TARGET``, chosen among
``CANDIDATES`` by LoRA's gain: ``--tasks`` runs any of them). Then the two domains in
one run (``data.datasets``) with each ``lora.task_adapters`` choice, against the two runs apart.

Reported per run: target mAP and cgF1 gain over the base (held-out test split), base-concept
mAP drop (forgetting), trainable parameters, adapter size on disk, seconds per step and peak
RSS of the run (each run in a fresh process, so each peak is its own).

    python bench/peft_study.py [--scale tiny|cpu-full|gpu] [--methods ...] [--tasks ...]
        [--multitask shared per_task both] [--reuse ROWS] [--write]

``tiny`` uses the demo's quick budget; the other scales its full budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import append_entry, machine
from run_folder import adapter_mb, seconds_per_step

from sam3_lora.config import METHOD_KEYS, LoRAConfig, load_config
from sam3_lora.recipes.demo import (
    BUDGETS,
    REPLAY_TASK,
    TARGET,
    Budget,
    make_data,
    one_thread,
    run_demo,
)

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## PEFT methods: the study"
METHOD_ORDER = ("lora", "loha", "lokr", "adalora", "vera", "ia3", "adapter")
REFERENCE = "lora"   # the demo's own method and rank: the budget every other method is matched to
# Candidates for the second domain, each screened with LoRA alone at the quick budget
# (``--methods lora --tasks NAME...``; BENCHMARKS.md): a target that no quick run learns compares
# no method. Named by what is new to the base (4 colours x circle/square/triangle on plain/noise).
CANDIDATES = {
    "new-colours": {"concepts": ("magenta circle", "orange triangle", "purple square"), "background": ("plain",)},
    "new-shapes": {"concepts": ("red star", "blue hexagon", "yellow cross"), "background": ("checker",)},
    "new-all-checker": {"concepts": ("magenta hexagon", "cyan star", "purple cross"), "background": ("checker",)},
    "white-black-gradient": {"concepts": ("magenta star", "white hexagon", "black cross"), "background": ("gradient",)},
    "white-black-stripes": {"concepts": ("magenta star", "white hexagon", "black cross"), "background": ("stripes",)},
}
# The second domain: the candidate LoRA learnt best (+0.234 mAP; white-black-gradient, the first
# choice, +0.013: white and black shapes are what no quick run learns, on stripes as on a gradient).
SECOND_TARGET = CANDIDATES["new-colours"]
TASKS = {"demo": TARGET, "second": SECOND_TARGET}
TARGETS = {**TASKS, **CANDIDATES}
TASK_ADAPTERS = ("shared", "per_task", "both")
MAX_SEARCH_RANK = 1024   # config's MAX_RANK: no method's rank goes higher


def method_overrides(method: str, rank: int | None) -> list[str]:
    """Overrides of the demo config that switch to ``method`` at ``rank`` (alpha = 2 x rank, the
    demo's ratio, where the method reads it); keys the method does not read go back to their
    defaults (the demo config sets rank and alpha, which e.g. ia3 refuses)."""
    read = METHOD_KEYS[method]
    defaults = LoRAConfig()
    overrides = [f"lora.method={method}"]
    if rank is not None and "rank" in read:
        overrides.append(f"lora.rank={rank}")
    else:
        overrides.append(f"lora.rank={defaults.rank}")
    overrides.append(f"lora.alpha={2 * rank}" if rank is not None and "alpha" in read else f"lora.alpha={defaults.alpha}")
    return overrides


def trainable_parameters(overrides: list[str]) -> int:
    """Trainable parameters of the demo config with ``overrides``, counted on the meta device
    (shapes only, as ``sam3-lora info`` does: instant)."""
    import torch
    from transformers import Sam3Model

    from sam3_lora.lora.apply import apply_lora_to_model, count_parameters
    from sam3_lora.model.loading import load_sam3_config
    from sam3_lora.model.roi_align import install_fallback

    config = load_config("demo", overrides)
    install_fallback()
    with torch.device("meta"):
        model = apply_lora_to_model(Sam3Model(load_sam3_config(config.model.source)), config.lora, verbose=False)
    return count_parameters(model).trainable


def match_rank(count, budget: int, top: int = MAX_SEARCH_RANK) -> int:
    """The smallest rank whose ``count(rank)`` (trainable parameters, non-decreasing in the
    rank) is the largest that does not exceed ``budget``; 1 when even rank 1 exceeds it.
    Smallest: where the count stops growing (e.g. lokr's factors are full), a higher rank
    only costs time."""
    low, high = 1, top
    while low < high:   # the largest rank within the budget
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count(middle) <= budget else (low, middle - 1)
    best = count(low)
    first, last = 1, low
    while first < last:   # the smallest rank with that count
        middle = (first + last) // 2
        first, last = (first, middle) if count(middle) >= best else (middle + 1, last)
    return first


def matched_methods(methods: list[str]) -> dict[str, dict]:
    """Each method's rank (None: it has none) and trainable parameters, matched to the demo's LoRA."""
    budget = trainable_parameters([])
    matched = {}
    for method in methods:
        if method == REFERENCE:
            rank = load_config("demo").lora.rank
        elif "rank" in METHOD_KEYS[method]:
            rank = match_rank(lambda r, m=method: trainable_parameters(method_overrides(m, r)), budget)
        else:
            rank = None
        overrides = [] if method == REFERENCE else method_overrides(method, rank)
        matched[method] = {"rank": rank, "overrides": overrides, "trainable": trainable_parameters(overrides)}
        print(f"{method}: rank {rank}, {matched[method]['trainable']:,} trainable (LoRA: {budget:,})", flush=True)
    return matched


def run_method(folder: Path, target: dict, budget: Budget, overrides: list[str]) -> dict:
    """One demo run (in this process); its gains, forgetting, size, speed and memory."""
    summary = run_demo(folder, target=target, budget=budget, overrides=overrides, seed=0)
    run = folder / "run"
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    batch = load_config(str(run / "config.yaml")).training.batch_size
    base, tuned, concepts = summary["base"], summary["finetuned"], summary["base_concepts"]
    return {"mAP_gain": tuned["mAP"] - base["mAP"], "cgF1_gain": tuned["cgF1"] - base["cgF1"],
            "mAP": tuned["mAP"], "forgetting": concepts["base"]["mAP"] - concepts["finetuned"]["mAP"],
            "trainable": summary["trainable_parameters"], "s_per_step": seconds_per_step(run, batch),
            "size_mb": adapter_mb(run / "best"),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in logs if "peak_memory_mb" in r)}


def in_fresh_process(function, *args):
    """``function(*args)`` in a new process: its peak RSS is its own, not an earlier run's."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def method_rows(task: str, matched: dict[str, dict], budget: Budget, work: Path,
                reused: dict[tuple[str, str], dict]) -> list[dict]:
    """Each matched method's run on ``task`` (``reused``: rows of an earlier run, not run again)."""
    rows = []
    for method, match in matched.items():
        row = reused.get((task, method))
        if row is None:
            row = {"task": task, "method": method, "rank": match["rank"], "trainable": match["trainable"]}
            try:
                row.update(in_fresh_process(run_method, work / f"{task}-{method}", TARGETS[task], budget,
                                            match["overrides"]))
            except Exception as error:   # noqa: BLE001 (a method that fails is a result: shown in its row)
                row["failed"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run_multitask(work: Path, budget: Budget, choice: str) -> list[dict]:
    """One LoRA run on both targets (``data.datasets``, ``lora.task_adapters=choice``) for as many
    steps as the separate runs together, each target scored through its adapters
    (``validate(..., task=NAME)``): its gains and its forgetting, as ``run_method`` measures.
    The base's concepts are replayed as a third dataset (``REPLAY_TASK``), as in the demo; with
    ``per_task`` it trains an adapter of its own, so the targets' adapters never see it."""
    from sam3_lora.recipes.train import SAM3LoRATrainer
    from sam3_lora.recipes.validate import validate

    for task, target in TASKS.items():
        make_data(work / "data" / task, budget, seed=0, target=target)
    entries = [{"name": task, "root": str(work / "data" / task / "target"), "weight": budget.train_images}
               for task in TASKS]
    if budget.replay_images:   # one more dataset, as in each separate run: as many replayed images per target image
        entries.append({"name": REPLAY_TASK, "root": str(work / "data" / "demo" / "base-concepts"),
                        "weight": budget.replay_images * len(TASKS)})
    run = work / f"run-{choice}"
    # the demo config names a data.root, which data.datasets replaces: back to the default
    config = load_config("demo", ["data.root=data", f"data.datasets={json.dumps(entries)}", f"output.dir={run}",
                                  f"training.max_steps={budget.steps * len(TASKS)}", "training.seed=0",
                                  f"lora.task_adapters={choice}"])
    with one_thread():
        summary = SAM3LoRATrainer(config, quiet=True).train()
        rows = []
        for task in TASKS:
            target = validate(config, split="test", compare_base=True, task=task, output=run / f"eval-{task}")
            concepts = config.model_copy(update={"data": config.data.model_copy(update={"datasets": [
                entry.model_copy(update={"root": str(work / "data" / "demo" / "base-concepts")})
                for entry in config.data.datasets]})})
            retained = validate(concepts, split="test", compare_base=True, task=task, output=run / f"eval-base-{task}")
            rows.append({"task": task, "method": f"lora, {choice} (one run)", "rank": config.lora.rank,
                         "mAP_gain": target["mAP"] - target["base"]["mAP"],
                         "cgF1_gain": target["cgF1"] - target["base"]["cgF1"], "mAP": target["mAP"],
                         "forgetting": retained["base"]["mAP"] - retained["mAP"],
                         "trainable": summary["trainable_parameters"],
                         "s_per_step": seconds_per_step(run, config.training.batch_size),
                         "size_mb": adapter_mb(run / "best"),
                         "peak_memory_mb": summary["peak_memory_mb"]})
    return rows


def _cell(value, form: str) -> str:
    return "-" if value is None else form.format(round(value, 3) + 0.0)   # no "-0.000"


def method_table(rows: list[dict]) -> str:
    lines = [("| task | method | rank | target mAP gain | target cgF1 gain | base-concept mAP drop | trainable | "
              "on disk | s/step | peak RSS |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['task']} | {r['method']} | {r['rank']} | failed: {r['failed']} | | | "
                         f"{r['trainable']:,} | | | |")
            continue
        lines.append(f"| {r['task']} | {r['method']} | {r['rank'] if r['rank'] is not None else '-'} | "
                     f"{_cell(r['mAP_gain'], '{:+.3f}')} | {_cell(r['cgF1_gain'], '{:+.3f}')} | "
                     f"{_cell(r['forgetting'], '{:+.3f}')} | {r['trainable']:,} | {_cell(r['size_mb'], '{:.3f} MB')} | "
                     f"{_cell(r['s_per_step'], '{:.3f}')} | {_cell(r['peak_memory_mb'], '{:.0f} MB')} |")
    return "\n".join(lines)


def goal_line(rows: list[dict], task: str = "demo", tolerance: float = 0.03) -> str:
    """Whether a method other than LoRA comes within ``tolerance`` of LoRA's target mAP gain on
    ``task`` with no more trainable parameters."""
    by_method = {r["method"]: r for r in rows if r["task"] == task and "failed" not in r}
    if REFERENCE not in by_method:
        return f"goal not checked: no {REFERENCE} run on {task}"
    reference = by_method[REFERENCE]
    close = [r for name, r in by_method.items() if name != REFERENCE and r["trainable"] <= reference["trainable"]
             and r["mAP_gain"] >= reference["mAP_gain"] - tolerance]
    names = ", ".join(f"{r['method']} ({r['mAP_gain']:+.3f})" for r in close)
    return (f"Goal (a method other than LoRA within {tolerance} of LoRA's {task} mAP gain, "
            f"{reference['mAP_gain']:+.3f}, at no more trainable parameters): "
            + (f"met by {names}." if close else "not met by any method."))


def plot(rows: list[dict], path: Path) -> None:
    """Target mAP gain against trainable parameters, one labelled point per method and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for task, marker in zip(TASKS, ("o", "s"), strict=True):
        chosen = [r for r in rows if r["task"] == task and "failed" not in r]
        if not chosen:
            continue
        axes.scatter([r["trainable"] for r in chosen], [r["mAP_gain"] for r in chosen], marker=marker, s=40,
                     label=f"{task} target")
        for r in chosen:
            axes.annotate(r["method"], (r["trainable"], r["mAP_gain"]), textcoords="offset points",
                          xytext=(5, 3), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log)")
    axes.set_ylabel("target mAP gain over the base (held-out)")
    axes.set_title("PEFT methods on the tiny base, matched to LoRA rank 4's parameters")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def earlier_rows(path: Path | None) -> dict[tuple[str, str], dict]:
    """Rows an earlier run printed (one JSON object at the end of a line, after any progress
    bar; other lines are skipped), by (task, method): ``--reuse`` takes them instead of running
    those runs again."""
    if path is None:
        return {}
    lines = path.read_text().splitlines()
    rows = [json.loads(line[line.index('{"task"'):]) for line in lines if '{"task"' in line]
    return {(r["task"], r["method"]): r for r in rows}


def describe_targets(names: list[str]) -> str:
    """``name = concepts on background`` for each target of ``names`` (``TARGETS``' keys)."""
    return "; ".join(f"{name} = {', '.join(TARGETS[name]['concepts'])} on {'/'.join(TARGETS[name]['background'])}"
                     for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "cpu-full", "gpu"], default="tiny")
    parser.add_argument("--methods", nargs="+", choices=METHOD_ORDER, default=list(METHOD_ORDER))
    parser.add_argument("--tasks", nargs="+", choices=list(TARGETS), default=list(TASKS),
                        help="targets to run each method on (those of CANDIDATES: screening the second)")
    parser.add_argument("--multitask", nargs="*", choices=TASK_ADAPTERS, default=[],
                        help="lora.task_adapters choices to train on both targets in one run")
    parser.add_argument("--reuse", type=Path, help="an earlier run's printed rows: those runs are not run again")
    parser.add_argument("--write", action="store_true", help="record the tables and plot in BENCHMARKS.md")
    args = parser.parse_args()
    budget = BUDGETS["quick" if args.scale == "tiny" else "full"]
    matched = matched_methods(args.methods)
    reused = earlier_rows(args.reuse)
    rows, joint = [], []
    with tempfile.TemporaryDirectory() as work:
        for task in args.tasks:
            rows += method_rows(task, matched, budget, Path(work), reused)
        for choice in args.multitask:
            joint += in_fresh_process(run_multitask, Path(work) / f"multitask-{choice}", budget, choice)
            print("\n".join(json.dumps(row) for row in joint[-len(TASKS):]), flush=True)
    text = method_table(rows) + "\n\n" + goal_line(rows)
    if joint:
        separate = [{**r, "method": "lora, separate runs"} for r in rows if r["method"] == REFERENCE]
        text += ("\n\nBoth targets in one LoRA run (`data.datasets`, as many steps as the two separate runs "
                 "together), each target scored through its adapters:\n\n"
                 + method_table(sorted(separate + joint, key=lambda r: list(TASKS).index(r["task"]))))
    print(text)
    if args.write:
        if "demo" in args.tasks:   # the plot shows the demo's target (the study's goal), the other where run
            plot(rows, ROOT / "docs" / "peft_study.png")
        command = (f"python bench/peft_study.py --scale {args.scale} --methods {' '.join(args.methods)} "
                   f"--tasks {' '.join(args.tasks)}" + (f" --multitask {' '.join(args.multitask)}" if joint else "")
                   + (" --reuse ROWS" if reused else "") + " --write")
        entry = (f"\n### {date.today()}: {budget.train_images} target images (+{budget.replay_images} replayed), "
                 f"{budget.steps} steps, seed 0\n\nCommand: `{command}`  \nMachine: {machine()}\n\n"
                 f"Targets: {describe_targets(list(dict.fromkeys([*args.tasks, *TASKS])) if joint else args.tasks)}."
                 "\n\n"
                 f"{text}\n" + ("\n![PEFT study](docs/peft_study.png)\n" if "demo" in args.tasks else ""))
        append_entry(HEADING, entry)


if __name__ == "__main__":
    main()
