"""The one training loop on the interactive task (model.task=interactive: SAM3's tracker)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import ConfigError
from sam3_lora.model.loading import BUNDLED
from sam3_lora.recipes.train import SAM3LoRATrainer
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """`sam3-lora data synth` at the tiny model's 112 px: 8 train, 4 valid images."""
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 8, "valid": 4}, image_size=112, seed=0)
    return root


def trainer(shapes, run_dir, *overrides, resume=None) -> SAM3LoRATrainer:
    config = load_config(TINY_CONFIG, [f"data.root={shapes}", f"output.dir={run_dir}", "model.task=interactive",
                                       "training.batch_size=4", "training.report_to=[]",
                                       "training.correction_rounds=3", "training.log_every_steps=1", *overrides])
    return SAM3LoRATrainer(config, resume=resume, quiet=True)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_interactive_training_lowers_the_loss(shapes, tmp_path):
    """20 LoRA steps on the random tiny tracker with clicks and boxes: training and held-out
    loss fall.

    Measured (seed 0): training loss ~18.5 over the first five steps, ~7 over the last five;
    validation 18.2 -> 5.5. From a random ViT the fall is in the focal, IoU and object-score
    terms (the masks become empty), not yet the dice: see the next test for masks that
    improve. With training.learning_rate=0 neither loss moves, so this can fail.
    """
    run = trainer(shapes, tmp_path / "run", "training.max_steps=20", "training.eval_every_steps=20").setup()
    before = run.evaluate()["val_loss"]
    summary = run.train()
    losses = [r["loss"] for r in records(tmp_path / "run") if "loss" in r]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert summary["best_value"] < 0.75 * before, (before, summary["best_value"])
    logged = next(r for r in records(tmp_path / "run") if "loss" in r)
    assert logged["objects_per_batch"] == 4 and logged["prompt"] in ("box", "click")
    assert {"loss_mask", "loss_dice", "loss_iou", "loss_class"} <= set(logged)
    for name in ("best", "last"):
        assert (tmp_path / "run" / name / "adapter_model.safetensors").is_file()


def test_from_a_detector_folder_the_masks_improve(shapes, tmp_path):
    """The bundled detector's pretrained ViT under fresh tracker heads (a detector folder as
    model.source: how the bundled tracker was made), all trained (method=full), one
    correction round: 80 steps lower the dice term itself (the masks' overlap).

    Measured (seed 0): mean dice 1.86 over the first ten steps, 1.49 over the last ten (the
    heads first learn the masks' mean, then where the prompt is). The data cycle every 8 steps, so the two windows see alike batches: with learning_rate 0
    they would match."""
    detector = BUNDLED["sam3-tiny-shapes"]
    run = trainer(shapes, tmp_path / "run", f"model.source={detector}", "training.method=full",
                  "training.learning_rate=3e-3", "training.max_steps=80", "training.eval_every_steps=80",
                  "training.correction_rounds=1", "training.lr_scheduler=constant")
    run.train()
    dice = [r["loss_dice"] for r in records(tmp_path / "run") if "loss_dice" in r]
    assert len(dice) == 80
    first, last = sum(dice[:10]) / 10, sum(dice[-10:]) / 10
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("method, weights", [("lora", "adapter_model.safetensors"),
                                             ("full", "model.safetensors")])
def test_resumes_to_the_same_weights(shapes, tmp_path, method, weights):
    """Stop after 2 steps, resume to 4 (mid-epoch): bitwise the adapter (or, with
    training.method=full, the whole tracker: transformers writes it under SAM3 checkpoint
    names) of the uninterrupted run, correction clicks included."""
    common = ["training.lr_scheduler=constant", "training.save_every_steps=2", "training.eval_every_steps=100",
              f"training.method={method}"]
    trainer(shapes, tmp_path / "a", "training.max_steps=4", *common).train()
    trainer(shapes, tmp_path / "b", "training.max_steps=2", *common).train()
    resumed = trainer(shapes, tmp_path / "b", "training.max_steps=4", *common, resume=tmp_path / "b")
    resumed.train()
    assert resumed.steps_per_epoch > 4   # one step per 4 objects: the resume is mid-epoch
    a = load_file(tmp_path / "a" / "last" / weights)
    b = load_file(tmp_path / "b" / "last" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_training_writes_tracker_folders(shapes, tmp_path):
    from sam3_lora.model.tracker import load_tracker

    run = trainer(shapes, tmp_path / "run", "training.method=full", "training.max_steps=1")
    run.train()
    reloaded = load_tracker(str(tmp_path / "run" / "last")).model
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, run.peft_model.state_dict()[key]), key


def test_detection_metrics_are_refused_in_one_line(shapes, tmp_path):
    with pytest.raises(ConfigError, match="best_metric=val_loss") as error:
        trainer(shapes, tmp_path / "run", "training.best_metric=mAP").setup()
    assert "\n" not in str(error.value)


def test_what_the_tracker_cannot_do_yet_is_one_line(shapes, tmp_path):
    """A 4-bit base exists for the detector only: refused, never ignored."""
    with pytest.raises(ConfigError, match="model.quantize=nf4 is not available with model.task=interactive"):
        trainer(shapes, tmp_path / "nf4", "model.quantize=nf4")


def test_tracker_width_builds_the_tracker_at_that_width(shapes, tmp_path):
    """model.tracker_width on a preset: the model trained (and its LoRA) is that wide; the
    concept task, which trains no tracker, refuses the key in one line."""
    run = trainer(shapes, tmp_path / "wide", "model.tracker_width=64", "training.max_steps=1").setup()
    assert run.peft_model.get_base_model().config.mask_decoder_config.hidden_size == 64
    with pytest.raises(ConfigError, match="model.tracker_width=64 sets the tracker's width, and model.task=concept"):
        trainer(shapes, tmp_path / "concept", "model.tracker_width=64", "model.task=concept")


@pytest.mark.parametrize("frozen_trunk", [
    ["lora.apply_to_vision_encoder=false", "lora.apply_to_mask_decoder=true"],
    ["training.method=full", "training.component_learning_rates={vision_encoder: 0}"],
], ids=["lora-heads", "full-heads"])
def test_the_tracker_trains_on_cached_features_with_the_same_losses(shapes, tmp_path, frozen_trunk):
    """The vision encoder frozen (LoRA on the heads, or full training with its rate at 0):
    3 epochs with data.cache_features=ram give the losses of the same run without the cache,
    every image encoded once; with method=full only the heads moved."""
    common = [*frozen_trunk, "data.random_resize=false", "data.horizontal_flip=0", "training.max_steps=6",
              "training.eval_every_steps=2", "training.lr_scheduler=constant"]
    plain = trainer(shapes, tmp_path / "plain", *common).setup()
    plain.train()
    cached = trainer(shapes, tmp_path / "cached", *common, "data.cache_features=ram").setup()
    start = {key: value.clone() for key, value in cached.peft_model.state_dict().items()}
    cached.train()
    without, with_cache = records(tmp_path / "plain"), records(tmp_path / "cached")
    for key in ("loss", "val_loss"):
        expected, found = ([r[key] for r in rs if key in r] for rs in (without, with_cache))
        assert len(expected) == (6 if key == "loss" else 3)
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    # One encoding per image (8 train, 4 valid), though a batch holds a row per object.
    assert plain.features is None and cached.features.misses == 12 and cached.features.hits > 24
    if "training.method=full" in frozen_trunk:
        assert "(vision_encoder frozen: rate 0)" in cached._full_summary()
        trained = cached.peft_model.state_dict()
        moved = {key.split(".")[0] for key in trained if not torch.equal(trained[key], start[key])}
        assert moved and "vision_encoder" not in moved, moved


def test_a_head_rate_trains_the_iou_prediction_alone(shapes, tmp_path):
    """training.component_learning_rates names the tracker's IoU head inside its mask decoder:
    with every component at 0 and the head at a rate of its own, the head alone moves; a rate
    given to the mask decoder alone still reaches the head."""
    rates = "{vision_encoder: 0, prompt_encoder: 0, mask_decoder: 0, iou_prediction_head: 0.01}"
    run = trainer(shapes, tmp_path / "head", "training.method=full", "training.learning_rate=0",
                  f"training.component_learning_rates={rates}", "training.max_steps=2",
                  "training.lr_scheduler=constant").setup()
    start = {key: value.clone() for key, value in run.peft_model.state_dict().items()}
    run.train()
    trained = run.peft_model.state_dict()
    moved = {key for key in trained if not torch.equal(trained[key], start[key])}
    assert moved and all(".iou_prediction_head." in key for key in moved), sorted(moved)
    decoder = trainer(shapes, tmp_path / "decoder", "training.method=full",
                      "training.component_learning_rates={mask_decoder: 0.5}").setup()
    head_rates = {group["lr"] for group in decoder.optimizer.param_groups
                  if any(p is q for p in group["params"]
                         for q in decoder.peft_model.mask_decoder.iou_prediction_head.parameters())}
    assert head_rates == {0.5}


def test_an_adapter_on_the_prompt_encoders_convolutions_loads_back(shapes, tmp_path):
    """`all` reaches the prompt encoder's mask convolutions: PEFT's Conv2d LoRA (A the layer's
    kernel with r outputs, B a 1x1) is checked and loaded like a Linear one."""
    from sam3_lora.lora.weights import load_finetuned

    run = trainer(shapes, tmp_path / "run", "lora.target_modules=[all]", "lora.apply_to_prompt_encoder=true",
                  "lora.apply_to_mask_decoder=true", "training.max_steps=1", "training.learning_rate=0.05")
    run.train()
    saved = load_file(tmp_path / "run" / "best" / "adapter_model.safetensors")
    conv = [k for k in saved if "prompt_encoder.mask_embed.conv1.lora_A" in k]
    assert conv and saved[conv[0]].dim() == 4
    model, _, _ = load_finetuned(run.config)
    state = model.state_dict()
    loaded = next(k for k in state if "prompt_encoder.mask_embed.conv1.lora_A" in k)
    assert torch.equal(state[loaded], saved[conv[0]])
