"""The benchmark tooling in bench/: bench_steps at the tiny scale, run.py's scale table, and
peft_study's matching of trainable parameters."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))   # bench scripts import each other as top-level modules

import bench_memory
import bench_steps
import bench_track
import memory_by_module
import peft_study
import run

from sam3_lora.config import load_config


def test_bench_steps_tiny_rows():
    rows = bench_steps.measure("sam3-tiny", None, ["minimal"], [1, 2], "off", "no", queries=2,
                               steps=1, memory_limit_gb=20.0)
    assert [(r["preset"], r["batch_size"], r["checkpointing"]) for r in rows] == [
        ("minimal", 1, False), ("minimal", 2, False)]
    for row in rows:
        assert "oom" not in row
        assert row["images_per_s"] > 0 and row["s_per_step"] > 0
        assert row["peak_memory_gb"] > 0
        assert row["gflop_per_step"] > 0 and row["tflops"] > 0
        assert row["image_size"] == 112
    # Two images cost more FLOPs than one.
    assert rows[1]["gflop_per_step"] > rows[0]["gflop_per_step"]
    table = bench_steps.table(rows)
    assert table.count("\n| minimal |") == 2


def test_bench_steps_bf16_in_process():
    row = bench_steps.run_one("sam3-tiny", None, "balanced", 1, True, "bf16", queries=2, steps=1)
    assert row["precision"] == "bf16" and row["checkpointing"]
    assert row["images_per_s"] > 0 and row["gflop_per_step"] > 0


def test_bench_steps_bfloat16_base_and_memory_only_step():
    row = bench_steps.run_one("sam3-tiny", None, "minimal", 1, False, "bf16", queries=2, steps=0, dtype="bfloat16")
    assert row["dtype"] == "bfloat16" and row["precision"] == "bf16" and row["steps"] == 0
    assert row["peak_memory_gb"] >= row["after_load_gb"] > 0 and row["gflop_per_step"] is None
    with pytest.raises(Exception, match="model.dtype=bfloat16 with training.mixed_precision=no"):
        bench_steps.run_one("sam3-tiny", None, "minimal", 1, False, "no", queries=2, steps=0, dtype="bfloat16")


def test_bench_steps_builds_a_quantized_base_through_the_loader():
    """--quantize nf4 goes through load_sam3 as model.quantize does: the row says what the
    measured base was, and a preset without LoRA in the ViT (heads) runs with checkpointing."""
    pytest.importorskip("bitsandbytes")
    command = bench_steps.child_command("sam3", 1008, "heads", 1, True, "bf16", 4, 0, "bfloat16", "nf4")
    assert command[command.index("--quantize") + 1] == "nf4"
    row = bench_steps.run_one("sam3-tiny", None, "heads", 1, True, "bf16", queries=2, steps=0, dtype="bfloat16",
                              quantize="nf4")
    assert (row["quantize"], row["dtype"], row["preset"]) == ("nf4", "bfloat16", "heads")
    assert row["peak_memory_gb"] >= row["after_load_gb"] > 0
    assert bench_steps.run_one("sam3-tiny", None, "heads", 1, False, "bf16", queries=2, steps=0,
                               dtype="bfloat16")["quantize"] == "none"


def test_bench_steps_cached_features_skip_the_vision_encoder():
    """--cache-features: the measured steps read the vision features from the cache (fewer
    FLOPs, the ViT not run); a preset with LoRA in the ViT is refused with the reason."""
    plain, cached = (bench_steps.run_one("sam3-tiny", None, "heads", 1, True, "bf16", queries=2, steps=1,
                                         dtype="bfloat16", cached=cached) for cached in (False, True))
    assert not plain["cached_features"] and cached["cached_features"]
    assert cached["gflop_per_step"] < plain["gflop_per_step"]
    assert plain["runtime_gb"] > 0
    assert "| cached features |" in bench_steps.table([plain, cached])
    with pytest.raises(SystemExit, match="--cache-features: the vision encoder trains"):
        bench_steps.run_one("sam3-tiny", None, "minimal", 1, False, "no", queries=2, steps=0, cached=True)


def test_saved_tensors_are_summed_by_the_module_that_saved_them(tiny):
    """memory_by_module: a recomputed decoder layer saves little of its own (its checkpoint
    keeps its inputs, outside the count); without recomputing, all its activations."""
    from sam3_lora.lora.apply import apply_lora_to_model
    from sam3_lora.model.forward import forward_queries
    from sam3_lora.training.resources import enable_activation_checkpointing

    model = apply_lora_to_model(tiny.model, load_config("heads").lora, verbose=False).train()
    pixels, image_index, text, _ = bench_steps.synthetic_batch(tiny.processor, 1, 2, torch.device("cpu"))
    saved = {}
    for every in (0, 1):
        enable_activation_checkpointing(model, every)
        with memory_by_module.saved_by_module(model) as totals:
            forward_queries(model, image_index, pixel_values=pixels, aux_outputs=True, **text)
        saved[every] = totals
    layer = "detr_decoder.layers.0"
    assert saved[1].get(layer, 0) < saved[0][layer] / 10, (saved[0][layer], saved[1].get(layer))
    assert saved[1]["mask_decoder"] == saved[0]["mask_decoder"] > 0   # not recomputed


def test_memory_grid_has_a_quantize_axis_and_its_own_columns():
    grid = bench_memory.configurations([1008, 336], ["heads"], [True], ["bfloat16"], ("none", "nf4"))
    assert grid == [(336, "heads", "bfloat16", True, "none"), (336, "heads", "bfloat16", True, "nf4"),
                    (1008, "heads", "bfloat16", True, "none"), (1008, "heads", "bfloat16", True, "nf4")]
    plain = {"image_size": 1008, "preset": "minimal", "dtype": "bfloat16", "checkpointing": True,
             "peak_memory_gb": 7.19, "after_load_gb": 2.0}   # a row from before the axis: a plain base
    nf4 = {**plain, "quantize": "nf4", "peak_memory_gb": 4.5, "after_load_gb": 0.9}
    assert bench_memory.key(plain)[-1] == "none" and bench_memory.key(nf4)[-1] == "nf4"
    table = bench_memory.table([plain, nf4])
    assert table.splitlines()[2].endswith(
        "| bfloat16 base, checkpointing | loaded model (float32 / bfloat16) | nf4 base (bfloat16), checkpointing | "
        "loaded model (nf4, bfloat16) |")
    # the plain columns first, as before (the README and the trainer's table read those)
    assert "| 1008 | minimal | - | - | - | 7.19 GB | - / 2.00 GB | 4.50 GB | 0.90 GB |" in table
    # the nf4 estimate comes from the nf4 row, not the plain one
    estimate, _ = bench_memory.estimate_gb([plain, {**nf4, "image_size": 336}], 672, "minimal", "bfloat16", True, "nf4")
    assert estimate == pytest.approx(0.9 + 3.6 * 4)
    assert "nf4" not in bench_memory.table([plain])
    # a preset not run at a size has no line there; a base not loaded at all reads "-"
    mixed = bench_memory.table([plain, {**nf4, "preset": "heads", "image_size": 336}])
    assert "| 1008 | heads |" not in mixed and "| 336 | minimal |" not in mixed
    assert "| 1008 | minimal | - | - | - | 7.19 GB | - / 2.00 GB | - | - |" in mixed
    # rows that recorded the runtime before the model say how much of each figure it is
    assert "runtime" not in table
    noted = bench_memory.table([{**plain, "memory": "peak RSS", "runtime_gb": 0.37},
                                {**nf4, "memory": "peak RSS", "runtime_gb": 0.41}])
    assert "libraries, before any model: 0.37-0.41 GB in the rows that recorded it" in noted


def test_tables_from_several_runs_merge_the_latest_row(tmp_path):
    head = {"image_size": 336, "preset": "heads", "dtype": "bfloat16", "checkpointing": True}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([{**head, "oom": "> 9 GB"}, {**head, "preset": "minimal", "peak_memory_gb": 3.0}]))
    second.write_text(json.dumps([{**head, "peak_memory_gb": 2.0}, {**head, "quantize": "nf4", "peak_memory_gb": 1.0}]))
    rows = bench_memory.merged_rows([str(first), str(second)])
    assert [(r["preset"], r.get("quantize", "none"), r["peak_memory_gb"]) for r in rows] == [
        ("heads", "none", 2.0), ("minimal", "none", 3.0), ("heads", "nf4", 1.0)]


def test_memory_is_estimated_from_the_next_smaller_size_and_skipped_when_it_cannot_fit(monkeypatch):
    measured = {"image_size": 336, "preset": "balanced", "dtype": "float32", "checkpointing": False,
                "peak_memory_gb": 6.0, "after_load_gb": 4.0}
    estimate, reason = bench_memory.estimate_gb([measured], 672, "balanced", "float32", False)
    assert estimate == pytest.approx(4.0 + 2.0 * 4) and reason is None   # 4x the pixels
    assert bench_memory.estimate_gb([measured], 672, "balanced", "float32", True) == (None, None)
    oom = {**measured, "peak_memory_gb": None, "oom": "> 20 GB"}
    del oom["peak_memory_gb"]
    assert bench_memory.estimate_gb([oom], 1008, "balanced", "float32", False)[1] == "out of memory at 336 px"
    memory = {"MemAvailable": 10.0, "MemTotal": 24.0}
    monkeypatch.setattr(bench_memory, "available_gb", lambda field="MemAvailable": memory[field])
    args = argparse.Namespace(reserve_gb=2.0, wait_minutes=0, memory_limit_gb=20.0)
    assert bench_memory.next_configuration([(672, "balanced", "float32", False)], [measured], {}, args) == (None, None)
    assert bench_memory.next_configuration([(672, "balanced", "float32", True)], [measured], {}, args) == (
        (672, "balanced", "float32", True), None)   # nothing measured to estimate from: run it
    _, row = bench_memory.next_configuration([(1344, "balanced", "float32", False)], [measured], {}, args)
    assert row == {"skipped": "estimated 36.0 GB > 22.0 GB (all of this machine's memory less 2 GB)"}
    head = {"image_size": 672, "preset": "balanced", "dtype": "float32", "checkpointing": False}
    row = {**head, "skipped": "estimated 12.0 GB > 8.0 GB available"}
    rows = [row, {**head, "image_size": 336, "dtype": "bfloat16", "peak_memory_gb": 3.0, "after_load_gb": 2.0,
                  "memory": "peak RSS"}]
    table = bench_memory.table(rows)
    assert "| 672 | balanced | not run (est. 12.0 GB) | - | - | - | - / - GB |" in table
    assert "not run (est. N GB): the same configuration at the next smaller size" in table
    assert "| 336 | balanced | - | - | 3.00 GB | - | - / 2.00 GB |" in table


def test_bench_memory_runs_what_fits_first_and_resumes(monkeypatch, tmp_path):
    """Shared machine: a configuration that does not fit now waits while others run; one whose
    cap others' memory had lowered runs again; --resume keeps what was measured."""
    memory = {"MemAvailable": 13.0, "MemTotal": 24.0}
    monkeypatch.setattr(bench_memory, "available_gb", lambda field="MemAvailable": memory[field])
    monkeypatch.setattr(bench_memory.time, "sleep", lambda s: memory.update(MemAvailable=30.0))
    runs = []

    def fake_run(head, args):
        runs.append(bench_memory.key(head))
        if len(runs) == 2:   # others held memory: the cap was too low
            return {**head, "oom": "> 9 GB", "cap_gb": 9.0, "cap_lowered_by_others": True}
        peak = {336: 6.0, 672: 13.0}[head["image_size"]] - 2.0 * head["checkpointing"]
        return {**head, "peak_memory_gb": peak, "after_load_gb": 4.0}

    monkeypatch.setattr(bench_memory, "run_one", fake_run)
    out = tmp_path / "rows.json"
    args = argparse.Namespace(checkpointing="both", image_sizes=[672, 336], presets=["balanced"], dtypes=["float32"],
                              quantize=["none"], dry_run=False, resume=False, json=str(out), model="sam3", queries=4, reserve_gb=2.0,
                              wait_minutes=60, memory_limit_gb=20.0)
    rows = bench_memory.measure(args)
    # 672 off needs 4 + 2 * 4 = 12 GB > 13 - 2: it waits, 672 on (4 + 0 = 4 GB) goes first.
    assert [run[:4] for run in runs] == [(336, "balanced", "float32", True), (336, "balanced", "float32", False),
                                         (336, "balanced", "float32", False), (672, "balanced", "float32", True),
                                         (672, "balanced", "float32", False)]
    assert {run[4] for run in runs} == {"none"}
    assert [bench_memory.key(r) for r in rows] == [runs[0], *runs[2:]]   # the out-of-memory try left no row
    assert all("peak_memory_gb" in r for r in rows)
    runs.clear()
    assert len(bench_memory.measure(argparse.Namespace(**{**vars(args), "resume": True}))) == 4 and not runs


def test_bench_memory_dry_run_lists_the_grid_smallest_first():
    result = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), "--dry-run"],
                            capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 36 and lines[0].startswith("336 px minimal bfloat16 checkpointing on")
    assert lines[-1].startswith("1008 px full float32 checkpointing off")
    assert all("--steps 0" in line for line in lines)


def test_gpu_check_plan_and_a_tiny_run_on_cpu(tmp_path):
    script = str(BENCH / "gpu_check.py")
    plan = subprocess.run([sys.executable, script, "--dry-run"], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    # 4 presets (heads too) x 4, and heads with cached features x 2 checkpointing;
    # 4 presets x 2 checkpointing x 3 bases (float32, bfloat16, nf4) x 3 sizes
    assert "18 configurations" in plan and "72 one-step configurations" in plan and "5. video: track" in plan
    assert "heads batch 1 checkpointing on, cached features" in plan
    if not torch.cuda.is_available():
        refused = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 2 and "torch.cuda is not available" in refused.stderr
    out = tmp_path / "check.json"
    subprocess.run([sys.executable, script, "--device", "cpu", "--model", "sam3-tiny", "--image-size", "112",
                    "--memory-sizes", "112", "--presets", "heads", "--steps", "1", "--repeats", "1",
                    "--held-out-images", "4", "--tracker-width", "128", "--video-frames", "4", "--json", str(out)],
                   capture_output=True, text=True, timeout=300, check=True)
    found = json.loads(out.read_text())
    assert not found["skipped"]
    assert [(r["weights"], r["prompts"]) for r in found["latency"]] == [
        ("float32 (TF32 on CUDA)", 1), ("float32 (TF32 on CUDA)", 16), ("bfloat16", 1), ("bfloat16", 16)]
    assert found["outputs"]["mean_mask_iou"] > 0.5
    assert found["video"]["frames"] == 4 and found["video"]["frames_per_s"] > 0
    assert found["video"]["image_size"] == 112 and found["video"]["peak_memory_mb"] > 0
    assert set(found["held_out"]) == {"float32", "bfloat16", "delta"}
    assert [(r["batch_size"], r["checkpointing"], r["cached_features"]) for r in found["training"]] == [
        (1, False, False), (1, True, False), (4, False, False), (4, True, False), (1, False, True), (1, True, True)]
    assert all(r["images_per_s"] > 0 and r["gflop_per_step"] > 0 for r in found["training"])
    assert {r["dtype"] for r in found["training"]} == {"bfloat16"}
    plain, cached = found["training"][0], found["training"][4]
    assert cached["gflop_per_step"] < plain["gflop_per_step"]   # the vision encoder does not run
    assert sorted((r["dtype"], r["quantize"], r["checkpointing"]) for r in found["memory"]) == [
        ("bfloat16", "nf4", False), ("bfloat16", "nf4", True), ("bfloat16", "none", False),
        ("bfloat16", "none", True), ("float32", "none", False), ("float32", "none", True)]


def test_bench_track_follows_a_click_through_an_h264_clip():
    pytest.importorskip("av", reason="bench_track writes an H.264 clip: pip install 'sam3-lora[video]'")
    result = bench_track.measure("sam3-tiny-shapes", 4)
    assert result["frames"] == 4 and result["frames_per_s"] > 0 and result["peak_rss_mb"] > 0


def test_scale_table_lists_every_benchmark():
    scripts = {path.name for path in BENCH.glob("*.py")} - set(run.HELPERS)
    listed = [script for _, script, _, _ in run.BENCHMARKS]
    assert scripts <= set(listed), f"add {sorted(scripts - set(listed))} to bench/run.py's BENCHMARKS"
    assert len(listed) == len(set(listed))
    for name, script, write_flag, scales in run.BENCHMARKS:
        assert set(scales) == set(run.SCALES), name
        assert all(isinstance(args, list) for args in scales.values()), name
        path = BENCH / script
        assert path.is_file(), f"bench/run.py lists {script}, which does not exist"
        source = path.read_text()
        # The flag run.py passes must be the one the script has.
        if '"--no-write"' in source:
            assert write_flag == run.NO_WRITE, name
        elif '"--write"' in source:
            assert write_flag == run.WRITE, name
        else:
            assert write_flag is run.PRINTS, name


def test_command_normalises_write():
    assert run.command("bench_eval.py", ["--repeats", "1"], run.WRITE, True)[-1] == "--write"
    assert "--write" not in run.command("bench_eval.py", [], run.WRITE, False)
    assert run.command("bench_data.py", [], run.NO_WRITE, False)[-1] == "--no-write"
    assert "--no-write" not in run.command("bench_data.py", [], run.NO_WRITE, True)
    assert run.command("bench_train.py", ["--steps", "1"], run.PRINTS, True)[-2:] == ["--steps", "1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_scale_refused_without_cuda():
    result = subprocess.run([sys.executable, str(BENCH / "run.py"), "--scale", "gpu"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "torch.cuda is not available" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "==" not in result.stdout   # nothing was run


def test_match_rank_stays_within_the_budget_at_the_smallest_rank():
    def lokr_like(rank):   # grows by 100 per rank, then stops growing at rank 6 (full factors)
        return 1000 + 100 * min(rank, 6)

    assert peft_study.match_rank(lokr_like, budget=1450) == 4   # 1400: the most within 1450
    assert peft_study.match_rank(lokr_like, budget=10**6) == 6   # not 1024: a higher rank adds nothing
    assert peft_study.match_rank(lokr_like, budget=500) == 1   # even rank 1 exceeds it: the smallest


def test_method_overrides_reset_keys_the_method_does_not_read():
    assert peft_study.method_overrides("loha", 2) == ["lora.method=loha", "lora.rank=2", "lora.alpha=4"]
    assert peft_study.method_overrides("ia3", None) == ["lora.method=ia3", "lora.rank=8", "lora.alpha=16.0"]
    assert peft_study.method_overrides("vera", 233)[1:] == ["lora.rank=233", "lora.alpha=16.0"]
    for method in peft_study.METHOD_ORDER:   # each one a config the demo accepts
        peft_study.load_config("demo", peft_study.method_overrides(method, 3))


def test_earlier_rows_are_read_after_progress_bars(tmp_path):
    log = tmp_path / "log"
    log.write_text('train: 100%|###| 300/300\nvalidate: 5/5 {"task": "demo", "method": "lora", "mAP_gain": 0.28}\n')
    assert peft_study.earlier_rows(log) == {("demo", "lora"): {"task": "demo", "method": "lora", "mAP_gain": 0.28}}
    assert peft_study.earlier_rows(None) == {}


def test_every_candidate_target_is_one_synthesize_draws_and_the_second_is_one_of_them(tmp_path):
    from sam3_lora.data.synth import synthesize

    for name, target in peft_study.TARGETS.items():   # a misspelt colour fails here, not minutes into a study
        synthesize(tmp_path / name, **target, image_size=32, images_per_split={"train": 1})
    assert peft_study.SECOND_TARGET in peft_study.CANDIDATES.values()
    assert "new-colours = magenta circle, orange triangle, purple square on plain" in peft_study.describe_targets(
        ["new-colours"])
