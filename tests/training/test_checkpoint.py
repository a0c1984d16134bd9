import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sam3_lora.config import LoRAConfig
from sam3_lora.data.synth import synthesize
from sam3_lora.lora.adapter import write_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.training.checkpoint import (
    STATE_FILE,
    CheckpointError,
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


# ---- damaged checkpoints: fall back to the newest intact one, or refuse in one line ---------


def resumable_run(shapes, run_dir, *overrides):
    """A trainer of the tiny config on ``shapes``: batch 2, a checkpoint every step."""
    from sam3_lora.config import load_config
    from sam3_lora.recipes.train import SAM3LoRATrainer

    config = load_config(TINY_CONFIG, [f"data.root={shapes}", f"output.dir={run_dir}", "training.batch_size=2",
                                       "training.save_every_steps=1", "training.eval_every_steps=100",
                                       "training.report_to=[]", "training.save_total_limit=null",
                                       "training.log_every_steps=1", *overrides])
    return lambda resume=None, quiet=True: SAM3LoRATrainer(config, resume=resume, quiet=quiet)


@pytest.fixture(scope="module")
def two_checkpoints(shapes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two") / "run"
    resumable_run(shapes, run_dir, "training.max_steps=2")().train()
    return run_dir


def edit_state(change):
    def edit(folder):
        state = json.loads((folder / STATE_FILE).read_text())
        change(state)
        (folder / STATE_FILE).write_text(json.dumps(state))
    return edit


def truncate(name):
    def edit(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return edit


def nan_weights(folder):
    from safetensors.torch import save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    next(iter(tensors.values())).fill_(float("nan"))
    save_file(tensors, folder / "adapter_model.safetensors")


DAMAGE = {
    "truncated weights": (truncate("adapter_model.safetensors"), "adapter_model.safetensors: not a readable safetensors"),
    "truncated optimizer state": (truncate("optimizer.safetensors"), "optimizer.safetensors: not a readable safetensors"),
    "truncated JSON": (truncate(STATE_FILE), "trainer_state.json: not valid JSON"),
    "truncated adapter config": (truncate("adapter_config.json"), "adapter_config.json: not valid JSON"),
    "missing optimizer file": (lambda f: (f / "optimizer.safetensors").unlink(), "optimizer.safetensors: missing"),
    "state not an object": (lambda f: (f / STATE_FILE).write_text("[]"), "not a training state"),
    "wrong type": (edit_state(lambda s: s["progress"].update(epoch="0")), "progress.epoch: expected number, found text"),
    "wrong step": (edit_state(lambda s: s["progress"].update(step=7)), "progress.step is 7, but the folder is step 2"),
    "negative count": (edit_state(lambda s: s["progress"].update(batches_done=-3)), "progress.batches_done is negative"),
    "learning rate text": (edit_state(lambda s: s["optimizer"]["param_groups"][0].update(lr="x")),
                           r"param_groups\[0\].lr: expected number"),
    "NaN learning rate": (edit_state(lambda s: s["optimizer"]["param_groups"][0].update(lr=float("nan"))),
                          "lr: nan is not a finite number"),
    "bad RNG state": (edit_state(lambda s: s["rng"].update(torch=[1, 2, 3])), "rng.torch: expected a list of 5056"),
    "RNG out of range": (edit_state(lambda s: s["rng"].update(torch=[300] * len(s["rng"]["torch"]))),
                         "its training state does not load"),
    "scheduler emptied": (edit_state(lambda s: s.update(scheduler={})), "scheduler: keys differ"),
    "NaN weights": (nan_weights, "hold NaN or infinite values"),
    # A progress beyond what any run, or this one, reaches (10^30 batches was accepted).
    "huge count": (edit_state(lambda s: s["progress"].update(batches_done=10**30)),
                   r"trainer_state.json: progress.batches_done is 1.0e\+30, more than any run reaches"),
    "fractional count": (edit_state(lambda s: s["progress"].update(epoch=0.5)),
                         "progress.epoch: expected a whole number, found 0.5"),
    "batches beyond the epoch": (edit_state(lambda s: s["progress"].update(batches_done=9)),
                                 r"progress.batches_done is 9, more than the batches of an epoch .*\(8\)"),
    "evaluated after its step": (edit_state(lambda s: s["progress"].update(last_eval_step=3)),
                                 r"progress.last_eval_step is 3, more than the step \(2\)"),
    # trainer_state.json is written last: a folder without it was skipped without a word.
    "deleted training state": (lambda f: (f / STATE_FILE).unlink(), "/trainer_state.json: missing"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(shapes, two_checkpoints, tmp_path, capsys, case):
    damage, reason = DAMAGE[case]
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir)
    damage(run_dir / "checkpoints" / "step-000002")
    trainer = resumable_run(shapes, run_dir, "training.max_steps=3")(resume=run_dir, quiet=False).setup()
    assert trainer.step == 1
    said = capsys.readouterr().out
    assert re.search(f"checkpoint damaged: .*step-000002.*{reason}.*; resuming from "
                     f"{re.escape(str(run_dir / 'checkpoints' / 'step-000001'))} instead", said), said


def test_resuming_with_no_intact_checkpoint_is_one_line(shapes, two_checkpoints, tmp_path):
    from sam3_lora.errors import Sam3LoraError

    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir)
    for step in ("step-000001", "step-000002"):
        (run_dir / "checkpoints" / step / "optimizer.safetensors").unlink()
    with pytest.raises(Sam3LoraError, match="no intact checkpoint to resume from: .*step-000002/optimizer.safetensors: "
                                            "missing; the 1 older one.s. are damaged too") as error:
        resumable_run(shapes, run_dir, "training.max_steps=3")(resume=run_dir).setup()
    assert error.value.option == "resume" and "\n" not in str(error.value)


def test_a_failed_restore_leaves_the_optimizer_as_it_was(tmp_path, tiny):
    model = apply_lora_to_model(tiny.model, LoRAConfig(rank=2), verbose=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    folder = save_checkpoint(tmp_path / "step-000001", partial(write_adapter, model), optimizer, scheduler, None,
                             {"step": 1})
    edit_state(lambda s: s["rng"].update(numpy="x"))(folder)
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 1.0)
    with pytest.raises(CheckpointError, match="rng.numpy: expected a list of 5, found text"):
        load_checkpoint(folder, fresh, fresh_scheduler, None)
    assert not fresh.state   # nothing was loaded


def test_disk_full_while_checkpointing_is_one_line_and_leaves_nothing_half_written(shapes, tmp_path, monkeypatch):
    import errno

    from sam3_lora.errors import Sam3LoraError
    from sam3_lora.training import checkpoint

    run_dir = tmp_path / "run"
    trainer = resumable_run(shapes, run_dir, "training.max_steps=3")().setup()
    written = []

    def disk_fills_up(tensors, path, *args, **kwargs):
        written.append(path)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_up)
    with pytest.raises(Sam3LoraError, match=r"step-000002: could not be written \(No space left on device\); "
                                            "nothing half-written was left") as error:
        trainer.train()
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001"]   # no staging left
    assert latest_checkpoint(run_dir).name == "step-000001"


def test_disk_full_inside_safetensors_while_checkpointing_is_one_line(tmp_path, monkeypatch, tiny):
    """safetensors raises its own SafetensorError on a full disk (not an OSError): it
    escaped as a traceback."""
    from safetensors import SafetensorError

    from sam3_lora.errors import Sam3LoraError
    from sam3_lora.training import checkpoint

    model = apply_lora_to_model(tiny.model, LoRAConfig(rank=2), verbose=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def disk_full(tensors, path, *args, **kwargs):
        raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at '
                              f'path "{path}"')

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(Sam3LoraError, match=r"step-000001: could not be written \(No space left on device\); "
                                            "nothing half-written was left") as error:
        save_checkpoint(tmp_path / "step-000001", partial(write_adapter, model), optimizer, scheduler, None,
                        {"step": 1})
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []


def test_a_resumed_run_logs_each_step_once(shapes, tmp_path):
    """Steps replayed after a resume were logged twice in metrics.jsonl."""
    run_dir = tmp_path / "run"
    resumable_run(shapes, run_dir, "training.max_steps=3")().train()
    shutil.rmtree(run_dir / "checkpoints" / "step-000003")   # killed before it was written
    with open(run_dir / "metrics.jsonl", "a") as log:
        log.write('{"step": 4, "lo')                          # ... in the middle of a line
    resumable_run(shapes, run_dir, "training.max_steps=4")(resume=run_dir).train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "lr" in r] == [1, 2, 3, 4]


def test_disk_full_while_logging_is_one_line(shapes, tmp_path, monkeypatch):
    import errno
    import io

    import sam3_lora.recipes.train as recipe
    from sam3_lora.errors import Sam3LoraError

    trainer = resumable_run(shapes, tmp_path / "run", "training.max_steps=2")().setup()

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recipe, "open_for_append", lambda path: FullDisk())
    with pytest.raises(Sam3LoraError, match=r"metrics.jsonl: could not be written \(No space left on device\); "
                                            "free some space, then resume from") as error:
        trainer.train()
    assert error.value.option == "resume"
