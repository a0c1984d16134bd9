import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from sam3_lora.config import TrainingConfig, load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import ConfigError, DataError, Sam3LoraError
from sam3_lora.recipes.train import SAM3LoRATrainer, TrainingError, lr_lambda
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """Synthetic coloured shapes at the tiny model's 112 px: 16 train, 8 valid images."""
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 16, "valid": 8, "test": 4}, image_size=112, seed=0)
    return root


def make_config(root, run_dir, *overrides):
    return load_config(TINY_CONFIG, [f"data.root={root}", f"output.dir={run_dir}", "training.batch_size=4",
                                "training.report_to=[]", "data.num_workers=0", *overrides])


def trainer_for(shapes, tmp_path, *overrides) -> SAM3LoRATrainer:
    return SAM3LoRATrainer(make_config(shapes, tmp_path / "run", *overrides), quiet=True).setup()


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- learning ---------------------------------------------------------------------------


def test_lowers_training_and_held_out_loss(shapes, tmp_path):
    """30 LoRA steps on the tiny preset: both losses fall by a clear, measured margin.

    Measured: validation 65.7 -> 39-40 and training ~72 -> ~43 (seed 0); the asserted 25%
    leaves head-room. With training.learning_rate=0 both stay put, so this can fail.
    """
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=30", "training.eval_every_steps=30",
                          "training.log_every_steps=1")
    before = trainer.evaluate()["val_loss"]
    summary = trainer.train()
    records = metrics(tmp_path / "run")
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert summary["steps"] == 30 and len(train_losses) == 30
    first, last = sum(train_losses[:5]) / 5, sum(train_losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert summary["best_metric"] == "val_loss"
    assert summary["best_value"] < 0.75 * before, (before, summary["best_value"])


def test_adalora_allocates_through_the_loops_hook_and_logs_its_final_ranks(shapes, tmp_path):
    """The loop runs the method's after-step hooks (AdaLoRA's allocation, its schedule fitted to
    the run's 6 steps); the final ranks are logged and saved with the adapter."""
    from sam3_lora.lora.adapter import read_metadata
    from sam3_lora.lora.apply import component_ranks

    trainer = trainer_for(shapes, tmp_path, "lora.method=adalora", "lora.rank=2", "training.max_steps=6",
                          "training.eval_every_steps=6")
    assert len(trainer.after_optimizer_step) == 1
    trainer.train()
    saved = read_metadata(tmp_path / "run" / "last")
    assert saved["method"] == "adalora" and len(set(saved["ranks"].values())) > 1   # the ranks moved
    logged = [r for r in metrics(tmp_path / "run") if "adapter_ranks" in r]
    assert logged == [{"step": 6, "adapter_ranks": component_ranks(saved["ranks"])}]
    assert sum(info["total"] for info in logged[0]["adapter_ranks"].values()) == 2 * len(saved["ranks"])


# ---- every training key has an effect -----------------------------------------------------

COVERED = set()


def covers(*keys):
    COVERED.update(keys)
    return keys


SETUP_EFFECTS = [
    (covers("batch_size"), ["training.batch_size=2"], lambda t: t.steps_per_epoch == 8),
    (covers("num_epochs"), ["training.num_epochs=3"], lambda t: t.total_steps == 12),
    (covers("max_steps"), ["training.max_steps=7"], lambda t: t.total_steps == 7),
    (covers("learning_rate"), ["training.learning_rate=0.05"], lambda t: t.scheduler.base_lrs == [0.05]),
    (covers("weight_decay"), ["training.weight_decay=0.3"],
     lambda t: {g["weight_decay"] for g in t.optimizer.param_groups} == {0.3}),
    (covers("gradient_accumulation_steps"), ["training.gradient_accumulation_steps=3"],
     lambda t: t.accelerator.gradient_accumulation_steps == 3 and t.steps_per_epoch == 2),
    (covers("component_learning_rates"), ["training.component_learning_rates={mask_decoder: 0.5}"],
     lambda t: sorted(g["lr"] for g in t.optimizer.param_groups) == [0.01, 0.5]),
    (covers("activation_checkpointing"), ["training.activation_checkpointing=2"],
     lambda t: t.checkpointed_blocks == 4),   # ViT, DETR enc., dec., the first box position MLP (LoRA there)
    (covers("lr_scheduler", "warmup_steps"), ["training.lr_scheduler=linear", "training.warmup_steps=3"],
     lambda t: t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 4)),
    # The interactive task's rounds per batch (tests/training/test_tasks.py: one step each).
    (covers("correction_rounds"), ["model.task=interactive", "training.correction_rounds=3"],
     lambda t: t.model.rounds == 3),
]


@pytest.mark.parametrize("keys, overrides, check", SETUP_EFFECTS, ids=lambda v: v[0] if isinstance(v, tuple) else None)
def test_setting_changes_the_setup(shapes, tmp_path, keys, overrides, check):
    assert check(trainer_for(shapes, tmp_path, *overrides))


@pytest.mark.parametrize("kind, values", [
    ("constant", [1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
    ("linear", [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
    ("cosine", [1 / 3, 2 / 3, 1.0, 0.75, 0.25]),
    ("inverse_sqrt", [1 / 3, 2 / 3, 1.0, 1 / math.sqrt(2), 1 / math.sqrt(3)]),
])
def test_schedules_with_warmup(kind, values):
    assert [lr_lambda(step, kind, warmup=2, total=5) for step in range(5)] == pytest.approx(values)


def test_seed_changes_weights_and_data_order(shapes, tmp_path):
    covers("seed")
    a, b = (trainer_for(shapes, tmp_path / str(s), f"training.seed={s}") for s in (0, 1))
    name = "base_model.model.detr_decoder.layers.0.self_attn.q_proj.base_layer.weight"
    assert not torch.equal(dict(a.peft_model.named_parameters())[name], dict(b.peft_model.named_parameters())[name])
    assert next(iter(a._train_batches()))[1]["image_ids"].tolist() != next(iter(b._train_batches()))[1]["image_ids"].tolist()


def test_bf16_autocasts_and_fp16_is_refused_on_cpu(shapes, tmp_path):
    covers("mixed_precision")
    trainer = trainer_for(shapes, tmp_path, "training.mixed_precision=bf16")
    dtypes = []
    layer = trainer.peft_model.base_model.model.detr_decoder.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer._forward_loss(next(iter(trainer._train_batches()))[1])
    handle.remove()
    assert dtypes == [torch.bfloat16]
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        trainer_for(shapes, tmp_path / "fp16", "training.mixed_precision=fp16")


def test_bfloat16_base_trains_float32_lora(shapes, tmp_path, capsys):
    """The issue's acceptance: `sam3-lora train --config demo model.dtype=bfloat16
    training.mixed_precision=auto` trains; the base is bfloat16, every LoRA weight, its
    gradient, AdamW's state and the saved adapter are float32."""
    from safetensors.torch import load_file

    from sam3_lora.cli import main

    run = tmp_path / "cli"
    argv = ["train", "--config", "demo", "model.dtype=bfloat16", "training.mixed_precision=auto",
            f"data.root={shapes}", f"output.dir={run}", "training.max_steps=2", "training.report_to=[]"]
    assert main(argv) == 0
    assert "precision: cpu: base weights bfloat16, autocast bf16, LoRA float32" in capsys.readouterr().out
    assert metrics(run)[0] == {"step": 0, "precision": {"device": "cpu", "base_dtype": "bfloat16", "autocast": "bf16",
                                                        "trained_dtype": "float32", "tf32": False}}
    for name in ("best", "last"):
        assert {t.dtype for t in load_file(run / name / "adapter_model.safetensors").values()} == {torch.float32}

    trainer = SAM3LoRATrainer(load_config("demo", argv[3:]), quiet=True, overwrite=True).setup()   # a second run
    params = dict(trainer.peft_model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    lora = {n: p for n, p in params.items() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert {n for n, p in params.items() if p.requires_grad} == set(lora)
    grads = {}
    handles = [p.register_hook(lambda g, n=n: grads.update({n: g.dtype})) for n, p in lora.items()]
    trainer.train()
    for handle in handles:
        handle.remove()
    assert grads and set(grads.values()) == {torch.float32}
    state = trainer.optimizer.optimizer.state
    assert state and {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.float32}
    assert {p.dtype for n, p in trainer.peft_model.named_parameters() if "lora_" not in n} == {torch.bfloat16}


def test_full_training_refuses_a_half_precision_base(shapes, tmp_path):
    with pytest.raises(ConfigError, match="model.dtype=bfloat16 with training.method=full"):
        trainer_for(shapes, tmp_path, "training.method=full", "model.dtype=bfloat16")
    trainer = trainer_for(shapes, tmp_path, "training.method=full", "training.mixed_precision=bf16")
    assert {p.dtype for p in trainer.peft_model.parameters()} == {torch.float32}   # fp32 master weights


def spy(calls: list, clip):
    """clip_grad_norm_ that records the max norm it was asked for."""

    def recorded(parameters, max_norm):
        calls.append(max_norm)
        return clip(parameters, max_norm)

    return recorded


def test_max_grad_norm_clips_and_zero_disables(shapes, tmp_path, monkeypatch):
    covers("max_grad_norm")
    for value, expected in ((0.5, [0.5]), (0, [])):
        trainer = trainer_for(shapes, tmp_path / str(value), "training.max_steps=1", f"training.max_grad_norm={value}")
        calls = []
        monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_", spy(calls, trainer.accelerator.clip_grad_norm_))
        trainer.train()
        assert calls == expected


def test_evaluation_checkpoint_and_log_cadence(shapes, tmp_path):
    covers("eval_every_steps", "save_every_steps", "save_total_limit", "log_every_steps", "report_to")
    run = tmp_path / "run"
    trainer_for(shapes, tmp_path, "training.max_steps=6", "training.eval_every_steps=2", "training.save_every_steps=3",
                "training.save_total_limit=1", "training.log_every_steps=4", "training.report_to=[tensorboard]").train()
    records = metrics(run)
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "lr" in r] == [1, 4]   # the first step is always logged
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000006"]
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {"best", "last", "config.yaml"} <= {p.name for p in run.iterdir()}
    assert load_config(run / "config.yaml").training.save_every_steps == 3


def test_max_evaluations_spaces_the_epoch_end_evaluations(shapes, tmp_path):
    """16 images at batch 8: 2-step epochs. Evaluating after each of a small dataset's tiny
    epochs ran 75 and 100 validations on real datasets; max_evaluations caps the count."""
    covers("max_evaluations")
    counted = {}
    for value in ("null", "2"):
        trainer_for(shapes, tmp_path / value, "training.max_steps=8", "training.batch_size=8",
                    f"training.max_evaluations={value}").train()
        counted[value] = [r["step"] for r in metrics(tmp_path / value / "run") if "val_loss" in r]
    assert counted == {"null": [2, 4, 6, 8], "2": [4, 8]}


def test_early_stopping(shapes, tmp_path):
    covers("early_stopping_patience")
    # With a zero learning rate the validation loss never improves after the first evaluation.
    summary = trainer_for(shapes, tmp_path, "training.max_steps=20", "training.eval_every_steps=2",
                          "training.early_stopping_patience=2", "training.learning_rate=0").train()
    assert summary["steps"] == 6


def test_best_metric_can_be_map_or_cgf1(shapes, tmp_path):
    covers("best_metric")
    trainer_for(shapes, tmp_path, "training.max_steps=4", "training.eval_every_steps=2",
                "training.best_metric=cgF1").train()
    evaluations = [r for r in metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    assert all({"mAP", "mAP50", "cgF1"} <= set(r) for r in evaluations)
    assert evaluations[0]["best"] is (evaluations[0]["cgF1"] is not None)
    loss_only = trainer_for(shapes, tmp_path / "loss", "training.max_steps=2")
    assert set(loss_only.evaluate()) == {"val_loss"}


def test_nonfinite_losses_are_skipped_then_stop(shapes, tmp_path):
    covers("max_nonfinite_steps")
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=5", "training.max_nonfinite_steps=3")
    criterion = trainer.criterion
    calls = []

    def poisoned(outputs, targets):
        losses = criterion(outputs, targets)
        calls.append(1)
        if len(calls) > 1:   # the first step is fine, then NaN forever
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    trainer.criterion = poisoned
    before = {k: v.clone() for k, v in trainer.peft_model.named_parameters() if v.requires_grad}
    with pytest.raises(TrainingError, match="NaN or infinite for 3 steps in a row at step 1: lower training.learning_rate"):
        trainer.train()
    after_first = dict(trainer.peft_model.named_parameters())
    assert any(not torch.equal(before[k], after_first[k]) for k in before)   # step 1 happened
    assert [r["nonfinite_steps"] for r in metrics(tmp_path / "run") if "nonfinite_steps" in r] == [1, 2, 3]


def test_correction_keys_reach_the_trackers_training_forwards():
    """The tracker tasks' keys reach the modules that draw their clicks (what they change in
    the clicks: tests/training/test_video_task.py)."""
    from torch import nn

    from sam3_lora.training.tasks import build_task

    covers("frames_to_correct", "correction_from_mask_probability")
    keys = ["training.frames_to_correct=3", "training.correction_from_mask_probability=0.25"]
    video = build_task(load_config(None, ["model.task=video", *keys]), 56).wrap(nn.Identity())
    image = build_task(load_config(None, ["model.task=interactive", *keys]), 56).wrap(nn.Identity())
    assert (video.frames_to_correct, video.from_mask_probability, image.from_mask_probability) == (3, 0.25, 0.25)
    default = build_task(load_config(None, ["model.task=video"]), 56).wrap(nn.Identity())
    assert (default.frames_to_correct, default.from_mask_probability) == (2, 0.1)


def test_every_training_key_is_covered_by_an_effect_test():
    assert COVERED == set(TrainingConfig.model_fields), set(TrainingConfig.model_fields) ^ COVERED


# ---- failures the user can act on --------------------------------------------------------


def test_out_of_memory_gives_advice(shapes, tmp_path, monkeypatch):
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=2")

    def out_of_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trainer, "_forward_loss", out_of_memory)
    with pytest.raises(TrainingError, match="out of memory at step 0: lower training.batch_size.*activation_checkpointing"):
        trainer.train()


def test_a_resumed_epoch_end_is_evaluated_once(shapes, tmp_path):
    """A run stopped at an epoch's end (its last step, evaluated and checkpointed) and resumed
    evaluated that step again: two val_loss records of one step in metrics.jsonl."""
    run = tmp_path / "run"
    trainer_for(shapes, tmp_path, "training.max_steps=4").train()   # 16 images at batch 4: one epoch
    SAM3LoRATrainer(make_config(shapes, run, "training.max_steps=8"), resume=run, quiet=True).train()
    assert [r["step"] for r in metrics(run) if "val_loss" in r] == [4, 8]


def test_a_checkpoint_from_before_last_eval_step_still_resumes(shapes, tmp_path):
    """Checkpoints written before ``progress.last_eval_step`` existed resume as that version
    did (the epoch end evaluated again), rather than being refused as damaged."""
    run = tmp_path / "run"
    trainer_for(shapes, tmp_path, "training.max_steps=4").train()
    for state_file in run.glob("checkpoints/*/trainer_state.json"):
        state = json.loads(state_file.read_text())
        del state["progress"]["last_eval_step"]
        state_file.write_text(json.dumps(state))
    SAM3LoRATrainer(make_config(shapes, run, "training.max_steps=8"), resume=run, quiet=True).train()
    assert [r["step"] for r in metrics(run) if "val_loss" in r] == [4, 4, 8]


def test_without_validation_split_last_is_best(shapes, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(shapes / "train", root / "train")
    trainer = SAM3LoRATrainer(make_config(root, tmp_path / "run", "training.max_steps=2"))
    summary = trainer.train()
    assert "no validation split" in capsys.readouterr().out
    assert summary["best_value"] is None
    run = tmp_path / "run"
    assert (run / "best" / "adapter_model.safetensors").read_bytes() == (run / "last" / "adapter_model.safetensors").read_bytes()


def test_data_errors_are_refused_unless_skipped(shapes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    victim = min((root / "train").glob("*.png"))
    victim.unlink()
    with pytest.raises(DataError, match="data.skip_invalid=true"):
        trainer_for(root, tmp_path)
    trainer = trainer_for(root, tmp_path, "data.skip_invalid=true")
    assert len(trainer.sources[0].splits["train"].images) == 15


def test_missing_data_root_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.root=.*no train/ folder"):
        trainer_for(tmp_path / "nowhere", tmp_path)
    # One COCO folder where train/ should be: the split command that makes train/valid/test of it.
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "_annotations.coco.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no train/ folder.*`sam3-lora data convert split .*export "):
        trainer_for(tmp_path, tmp_path / "run")


def test_nonfinite_outputs_are_skipped_like_a_nonfinite_loss(shapes, tmp_path):
    """learning_rate=10000 makes step 2's predictions NaN, on which the matcher died
    (scipy: "matrix contains invalid numeric entries") before the guard saw the loss."""
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=8", "training.learning_rate=10000",
                          "training.max_nonfinite_steps=2", "training.eval_every_steps=100")
    with pytest.raises(TrainingError, match="outputs or loss were NaN or infinite for 2 steps in a row at step 1"):
        trainer.train()


def test_one_step_of_nonfinite_outputs_is_skipped_and_training_goes_on(shapes, tmp_path):
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=3", "training.eval_every_steps=100")
    criterion, calls = trainer.criterion, []

    def poisoned(outputs, targets):
        calls.append(1)
        if len(calls) == 2:
            outputs = {**outputs, "pred_logits": outputs["pred_logits"] * float("inf")}
        return criterion(outputs, targets)

    trainer.criterion = poisoned
    assert trainer.train()["steps"] == 3
    assert [r["nonfinite_steps"] for r in metrics(tmp_path / "run") if "nonfinite_steps" in r] == [1]


def test_a_nan_validation_loss_is_never_the_best():
    from sam3_lora.recipes.train import _better_is_higher

    assert _better_is_higher("val_loss", {"val_loss": float("nan")}) is None
    assert _better_is_higher("val_loss", {"val_loss": 2.0}) == -2.0


def model_must_not_load(monkeypatch):
    import sam3_lora.recipes.train as recipe

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(recipe, "load_base", refuse)


@pytest.mark.parametrize("output, message", [
    ("a-file", "output.dir .*a-file: is a file; give a folder there"),
    ("a-file/run", "a-file is a file, so nothing can be written under it"),
    ("read-only/run", "read-only is not writable; choose a writable place"),
    ("/proc/nope", "output.dir /proc/nope: nothing can be created in /proc"),   # os.access says yes to root
])
def test_unwritable_outputs_are_refused_before_the_model_loads(shapes, tmp_path, monkeypatch, output, message):
    import os

    from sam3_lora.errors import Sam3LoraError

    (tmp_path / "a-file").write_text("")
    (tmp_path / "read-only").mkdir()
    access = os.access
    # Tests run as root, for whom every folder is writable: the read-only one is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and "read-only" not in str(path))
    model_must_not_load(monkeypatch)
    with pytest.raises(Sam3LoraError, match=message):
        SAM3LoRATrainer(make_config(shapes, tmp_path / output)).setup()


def test_a_used_run_folder_is_refused_unless_resumed_or_overwritten(shapes, tmp_path, monkeypatch, capsys):
    """A second run into one output.dir replaced best/ and last/, mixed both runs in
    metrics.jsonl and pruned its own checkpoints while keeping the first run's, so that a
    later resume continued the first run under the second's config."""
    from sam3_lora.cli import main

    run = tmp_path / "run"
    command = ["train", "--config", str(TINY_CONFIG), f"data.root={shapes}", f"output.dir={run}",
               "training.report_to=[tensorboard]", "training.save_every_steps=1", "training.save_total_limit=null"]
    assert main([*command, "training.max_steps=2"]) == 0
    (run / "notes.txt").write_text("the user's")
    before = {str(p): p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    with monkeypatch.context() as patch:
        model_must_not_load(patch)
        assert main([*command, "training.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(
        r"output.dir .*run: holds an earlier run \(config.yaml, metrics.jsonl, checkpoints/, best/\), which a new "
        r"run would mix with; continue it \(resume from .*run\), replace it \(overwrite\), or choose another "
        r"output.dir \(--overwrite\)$", err), err
    assert {str(p): p.stat().st_mtime_ns for p in run.rglob("*")} == before   # nothing touched

    assert main([*command, "training.max_steps=1", "--overwrite"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert [r["step"] for r in metrics(run) if "precision" in r] == [0]          # one run's records
    assert load_config(run / "config.yaml").training.max_steps == 1
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and not [p for p in events if str(p) in before]                # the new run's alone
    assert (run / "notes.txt").read_text() == "the user's"


def test_outputs_are_never_written_through_links_planted_in_the_run_folder(shapes, tmp_path):
    run = tmp_path / "run"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "metrics.jsonl").write_text("precious\n")
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=1")
    (run / "best").symlink_to(victim, target_is_directory=True)
    trainer.train()
    assert not (run / "best").is_symlink() and (run / "best" / "adapter_model.safetensors").is_file()
    assert [p.name for p in victim.iterdir()] == ["metrics.jsonl"]

    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim / "metrics.jsonl")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(victim / "config.yaml")
    with pytest.raises(Sam3LoraError, match="run/config.yaml: is a symbolic link; output files are never written"):
        SAM3LoRATrainer(make_config(shapes, run, "training.max_steps=2"), resume=run, quiet=True).setup()
    overwritten = SAM3LoRATrainer(make_config(shapes, run, "training.max_steps=1"), overwrite=True, quiet=True)
    overwritten.train()
    assert not (run / "metrics.jsonl").is_symlink() and not (run / "config.yaml").is_symlink()
    assert [p.name for p in victim.iterdir()] == ["metrics.jsonl"]
    assert (victim / "metrics.jsonl").read_text() == "precious\n"


def test_data_is_checked_before_the_model_loads(shapes, tmp_path, monkeypatch):
    model_must_not_load(monkeypatch)
    with pytest.raises(ConfigError, match="no train/ folder"):
        trainer_for(tmp_path / "nowhere", tmp_path)
    root = tmp_path / "no-images"
    shutil.copytree(shapes / "train", root / "train", ignore=shutil.ignore_patterns("*.png"))
    with pytest.raises(DataError, match="no usable image in") as error:   # skipping could not help
        trainer_for(root, tmp_path)
    assert "skip_invalid" not in str(error.value)


def test_one_prompt_datasets_warn_that_they_have_no_negatives(shapes, tmp_path):
    with pytest.warns(UserWarning, match="one prompt .object., so there are no negative queries.*data.negative_phrases"):
        trainer_for(shapes, tmp_path, "data.prompt_mode=generic")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer_for(shapes, tmp_path / "phrases", "data.prompt_mode=generic", "data.negative_phrases=[dog]")
        trainer_for(shapes, tmp_path / "prompts")
    assert not [w for w in caught if "negative" in str(w.message)]


# ---- scale: two processes, and the full-size architecture -----------------------------------


def test_two_processes_match_one(shapes, tmp_path):
    """torchrun with 2 CPU processes (gloo): identical adapters on both ranks, and the loss of
    the global batch equals a single process's over the same 4 images."""
    from pathlib import Path

    from safetensors.torch import load_file

    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    # loss.scale_by_num_prompts scales each process's total by sqrt(its own rows), as SAM3
    # does per GPU: off here, so that one process and two compute the same loss.
    common = [f"data.root={shapes}", "training.max_steps=2", "training.report_to=[]", "training.log_every_steps=1",
              "training.eval_every_steps=100", "loss.scale_by_num_prompts=false"]
    runs = {
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                str(tmp_path / "two"), str(TINY_CONFIG), *common, f"output.dir={tmp_path / 'two'}", "training.batch_size=2"],
        "one": [sys.executable, str(script), str(tmp_path / "one"), str(TINY_CONFIG), *common,
                f"output.dir={tmp_path / 'one'}", "training.batch_size=4"],
    }
    for name, command in runs.items():
        (tmp_path / name).mkdir()
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "two" / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    two, one = (next(r for r in metrics(tmp_path / name) if "loss" in r) for name in ("two", "one"))
    assert two["step"] == one["step"] == 1
    # Per-process normalisation of the query-averaged terms differs slightly: measured 3e-4.
    assert two["loss"] == pytest.approx(one["loss"], rel=2e-3)
    assert two["loss_bbox"] == pytest.approx(one["loss_bbox"], rel=1e-4)   # box terms share one count


def test_nonfinite_outputs_on_one_process_skip_the_step_on_all(shapes, tmp_path):
    """Rank 1 alone gets NaN predictions for step 2: both ranks skip it together (no hang in
    a collective, no crash), and end with identical adapters."""
    from pathlib import Path

    from safetensors.torch import load_file

    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path),
               str(TINY_CONFIG), f"data.root={shapes}", "training.max_steps=3", "training.report_to=[]",
               "training.batch_size=2", "training.eval_every_steps=100", f"output.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "POISON": "1:2"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert [r["nonfinite_steps"] for r in metrics(tmp_path / "run") if "nonfinite_steps" in r] == [1]


@pytest.mark.slow
def test_full_size_step_at_336_px_changes_only_lora(tmp_path):
    """One LoRA step of the real 840M architecture at 336 px on CPU, then one with every ViT
    block checkpointed (each block's forward runs twice: once more in backward)."""
    from sam3_lora.recipes.train import enable_activation_checkpointing

    synthesize(tmp_path / "data", images_per_split={"train": 2}, image_size=336, seed=1)
    config = load_config("balanced", [f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'run'}",
                                      "model.source=sam3", "model.image_size=336", "training.max_steps=1",
                                      "data.num_negatives=1", "training.report_to=[]",
                                      "training.activation_checkpointing=0"])
    trainer = SAM3LoRATrainer(config, quiet=True).setup()
    before = {n: p.detach().sum().item() for n, p in trainer.peft_model.named_parameters()}
    block_calls = []
    # Count the block's first MLP layer: the recompute in backward calls it again (hooks on
    # the block or the whole MLP miss it: transformers checkpoints forward, and PyTorch stops
    # recomputing once the tensors backward needs are back).
    block = trainer.peft_model.base_model.model.vision_encoder.backbone.layers[3]
    block.mlp.fc1.base_layer.register_forward_hook(lambda *args: block_calls.append(1))
    trainer.train()
    assert len(block_calls) == 1
    enable_activation_checkpointing(trainer.peft_model, every=1)
    trainer.total_steps = 2
    trainer.train()
    assert len(block_calls) == 3
    after = {n: p.detach().sum().item() for n, p in trainer.peft_model.named_parameters()}
    changed = {n for n in before if before[n] != after[n]}
    assert changed and all("lora_" in n for n in changed)
    assert any("vision_encoder" in n for n in changed) and any("mask_decoder" in n for n in changed)


def test_annotation_file_name_is_configurable(shapes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shapes, root)
    for split in ("train", "valid", "test"):
        (root / split / "_annotations.coco.json").rename(root / split / "labels.json")
    with pytest.raises(DataError, match="_annotations.coco.json"):
        trainer_for(root, tmp_path)
    assert len(trainer_for(root, tmp_path, "data.annotation_file=labels.json").sources[0].splits["valid"].images) == 8


@pytest.mark.parametrize("keys", [covers("method")])
def test_full_method_trains_every_weight_saves_models_and_resumes(shapes, tmp_path, keys):
    """method=full: no LoRA, every weight moves, best/ and last/ are model folders that
    load_sam3 and validate read, and a resumed run ends on the same weights."""
    from safetensors.torch import load_file

    from sam3_lora.model.loading import load_sam3
    from sam3_lora.recipes.validate import validate

    common = ["training.method=full", "training.learning_rate=1e-3", "training.eval_every_steps=2",
              "training.lr_scheduler=constant"]   # the same schedule whatever max_steps says
    trainer = trainer_for(shapes, tmp_path, "training.max_steps=4", *common)
    before = {k: v.clone() for k, v in trainer.peft_model.named_parameters()}
    assert not any("lora_" in k for k in before) and all(p.requires_grad for p in trainer.peft_model.parameters())
    trainer.train()
    moved = [k for k, v in trainer.peft_model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("vision_encoder.") for k in moved) and any(k.startswith("text_encoder.") for k in moved)
    for name in ("best", "last"):
        assert (tmp_path / "run" / name / "model.safetensors").is_file()
        assert not (tmp_path / "run" / name / "adapter_config.json").exists()
    reloaded = load_sam3(str(tmp_path / "run" / "last")).model
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, trainer.peft_model.state_dict()[key]), key
    summary = validate(load_config(tmp_path / "run" / "config.yaml"))
    assert summary["weights"].endswith("best") and summary["presence_AUC"] is not None

    # Stop after 2 steps, resume to 4: the same weights as the uninterrupted run.
    stopped = trainer_for(shapes, tmp_path / "b", "training.max_steps=2", *common)
    stopped.train()
    resumed = SAM3LoRATrainer(make_config(shapes, tmp_path / "b" / "run", "training.max_steps=4", *common),
                              resume=tmp_path / "b" / "run", quiet=True)
    resumed.train()
    a = load_file(tmp_path / "run" / "last" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qlora_trains_lora_on_a_4bit_base_and_refuses_full_training(shapes, tmp_path):
    """model.quantize=nf4: the base's Linear layers are 4-bit as training starts, the loss
    falls, the adapter is float32; a Config built in Python cannot train a 4-bit base fully."""
    pytest.importorskip("bitsandbytes", reason="model.quantize needs bitsandbytes: pip install 'sam3-lora[quantize]'")
    from safetensors.torch import load_file

    trainer = trainer_for(shapes, tmp_path, "model.quantize=nf4", "training.max_steps=8", "training.log_every_steps=1")
    kinds = {type(m.base_layer).__name__ for m in trainer.peft_model.modules() if hasattr(m, "lora_A")}
    assert kinds == {"Linear4bit"}
    before = trainer.evaluate()["val_loss"]
    summary = trainer.train()
    assert summary["best_value"] < before
    assert {t.dtype for t in load_file(tmp_path / "run" / "last" / "adapter_model.safetensors").values()} == {
        torch.float32}
    config = make_config(shapes, tmp_path / "full", "training.method=full")
    config.model.quantize = "nf4"   # assignment is checked key by key, not against training.method
    with pytest.raises(ConfigError, match="model.quantize=nf4 cannot be trained with training.method=full"):
        SAM3LoRATrainer(config, quiet=True).setup()
