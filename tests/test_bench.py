"""The benchmark tooling in bench/: bench_steps at the tiny scale, and run.py's scale table."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))   # bench scripts import each other as top-level modules

import bench_steps
import run


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
