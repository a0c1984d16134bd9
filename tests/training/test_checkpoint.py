import os
import random
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam3_lora.config import LoRAConfig
from sam3_lora.data.synth import synthesize
from sam3_lora.lora.adapter import write_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.training.checkpoint import (
    STATE_FILE,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tests.conftest import TINY_CONFIG


def draws():
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_rng_states_round_trip_through_json():
    import json

    state = json.loads(json.dumps(rng_state()))
    expected = draws()
    set_rng_state(state)
    assert draws() == expected


def test_optimizer_scheduler_and_rng_are_restored(tmp_path, tiny):
    model = apply_lora_to_model(tiny.model, LoRAConfig(rank=2), verbose=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for _ in range(3):
        sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
        optimizer.step()
        scheduler.step()
    folder = save_checkpoint(tmp_path / "step-000003", partial(write_adapter, model), optimizer, scheduler, None,
                             {"step": 3})
    fresh_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0 / (step + 1))
    expected = draws()
    assert load_checkpoint(folder, fresh_optimizer, fresh_scheduler, None) == {"step": 3}
    assert draws() == expected
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(fresh_optimizer.state.values(), optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
    assert not list(tmp_path.glob(".*")), "staging folder left behind"
    assert not [p for p in folder.iterdir() if p.suffix in (".pt", ".bin", ".pkl")]


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step:06d}" / STATE_FILE).write_text("{}")
    (tmp_path / "checkpoints" / "step-000008").mkdir()   # a crash mid-write: no state file
    (tmp_path / "checkpoints" / ".step-000010.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000006"
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-0000")) == \
        ["step-000006", "step-000008"]


# ---- a real training process, interrupted and resumed -------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 16, "valid": 4, "test": 2}, image_size=112, seed=3)
    return root


def train_command(shapes, run_dir, *extra):
    # 16 images at batch 2: 8 steps an epoch, so 20 steps cross two epoch boundaries.
    return [sys.executable, "-m", "sam3_lora.cli", "train", "--config", str(TINY_CONFIG), f"data.root={shapes}",
            f"output.dir={run_dir}", "training.max_steps=20", "training.batch_size=2",
            "training.save_every_steps=3", "training.eval_every_steps=100", "training.report_to=[]",
            "training.save_total_limit=null", *extra]


def run_to_end(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def wait_for(path, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def adapter(run_dir):
    return load_file(run_dir / "last" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run_to_end(train_command(shapes, run_dir))
    return adapter(run_dir)


def assert_identical(resumed, expected):
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key


def test_killed_process_resumes_to_the_same_weights(shapes, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(shapes, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(run_dir / "checkpoints" / "step-000006" / STATE_FILE, process)
    process.kill()                         # SIGKILL: no handler runs, no goodbye checkpoint
    assert process.wait(timeout=60) == -signal.SIGKILL
    resumed_from = latest_checkpoint(run_dir).name
    result = run_to_end(train_command(shapes, run_dir, "--resume", str(run_dir)))
    assert f"resumed from {run_dir / 'checkpoints' / resumed_from}" in result.stdout + result.stderr
    assert_identical(adapter(run_dir), uninterrupted)   # bitwise, on CPU


def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(shapes, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(shapes, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for(run_dir / "checkpoints" / "step-000003" / STATE_FILE, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT
    assert "Traceback" not in stderr
    assert f"--resume {run_dir}" in stderr and "checkpoint saved" in stderr
    run_to_end(train_command(shapes, run_dir, "--resume", "auto"))
    assert_identical(adapter(run_dir), uninterrupted)


def test_resume_from_nothing_is_a_clear_error(shapes, tmp_path):
    result = subprocess.run(train_command(shapes, tmp_path / "run", "--resume", str(tmp_path / "empty")),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "no checkpoint there" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_is_handled_like_ctrl_c(shapes, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(shapes, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ})
    wait_for(run_dir / "checkpoints" / "step-000003" / STATE_FILE, process)
    process.terminate()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and "SIGTERM at step" in stderr
