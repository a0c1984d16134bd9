"""Activation checkpointing, and will a step fit: the measured memory table, estimates from it,
and the advice."""

import re
from pathlib import Path

import pytest
import torch

from sam3_lora.config import load_config
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.loading import load_sam3, load_sam3_config
from sam3_lora.training import resources
from sam3_lora.training.resources import (
    enable_activation_checkpointing,
    is_full_size,
    lora_preset,
    memory_advice,
    step_memory_gb,
)

# ---- activation checkpointing ----------------------------------------------------------------

def heads_step(tiny_inputs, every: int) -> tuple[float, dict[str, torch.Tensor], list[str]]:
    """One forward and backward of the tiny SAM3 with the heads preset's LoRA (dropout on) and
    ``training.activation_checkpointing=every``: the loss, every LoRA gradient, and the DETR
    layers' and the decoder's box position MLPs' forward calls in the order they ran (a
    recomputed layer runs twice)."""
    tiny = load_sam3("sam3-tiny", seed=0).model   # fresh: LoRA goes on the base in place
    torch.manual_seed(0)   # the same LoRA weights in both runs
    model = apply_lora_to_model(tiny, load_config("heads").lora, verbose=False).train()
    sam3 = model.get_base_model()
    assert enable_activation_checkpointing(model, every) == (
        0 if every == 0 else 5)   # the DETR encoder's 1 layer, decoder's 2, its 2 box MLPs; the frozen ViT none
    calls = []
    for stack in ("detr_encoder", "detr_decoder"):
        for index, layer in enumerate(getattr(sam3, stack).layers):
            # Its first module: the recompute in backward stops once it has what backward needs.
            layer.self_attn.register_forward_pre_hook(lambda *_, name=f"{stack}.{index}": calls.append(name))
    for axis in ("x", "y"):   # run once per decoder layer
        getattr(sam3.detr_decoder, f"box_rpb_embed_{axis}").layer1.register_forward_pre_hook(
            lambda *_, name=f"rpb_{axis}": calls.append(name))
    torch.manual_seed(0)   # the same dropout masks in both runs
    out = model(**tiny_inputs)
    loss = sum(out[k].float().square().mean() for k in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits"))
    loss.backward()
    # Text prompts only: the geometry (box) encoder does not run, its LoRA has no gradient.
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and "geometry_encoder" not in n}
    assert grads and all("lora_" in n and g is not None for n, g in grads.items())
    return loss.item(), grads, calls


def test_checkpointing_recomputes_the_detr_layers_and_changes_no_gradient(tiny_inputs):
    """heads trains no ViT weight: checkpointing recomputes the DETR encoder and decoder layers
    and the decoder's box position MLPs, which carry LoRA there (each runs twice in a step),
    with the same loss and LoRA gradients as without it."""
    loss, grads, calls = heads_step(tiny_inputs, every=0)
    layers = ["detr_encoder.0", "rpb_x", "rpb_y", "detr_decoder.0", "rpb_x", "rpb_y", "detr_decoder.1"]
    assert calls == layers
    recomputed_loss, recomputed_grads, recomputed_calls = heads_step(tiny_inputs, every=1)
    assert sorted(recomputed_calls) == sorted(layers * 2)
    assert recomputed_calls[:len(layers)] == layers   # the forward, then backward's recompute
    assert recomputed_loss == pytest.approx(loss, rel=1e-6)
    assert recomputed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_every_nth_layer_of_the_stacks_that_backward_passes(tiny):
    """Every n-th layer of each stack; the ViT's blocks only when something trains in the ViT
    (the tiny model: 2 ViT blocks, 1 DETR encoder layer, 2 decoder layers); 0 undoes it."""
    minimal = apply_lora_to_model(tiny.model, load_config("minimal").lora, verbose=False)
    assert enable_activation_checkpointing(minimal, 2) == 3   # ViT 0, encoder 0, decoder 0
    assert enable_activation_checkpointing(minimal, 1) == 5   # gradients to the ViT pass the DETR stacks
    sam3 = minimal.get_base_model()
    recomputing = [layer for layer in sam3.modules() if "forward" in vars(layer)]
    assert len(recomputing) == 5
    assert enable_activation_checkpointing(minimal, 0) == 0
    assert not [layer for layer in sam3.modules() if "forward" in vars(layer)]


# (px, preset, dtype, checkpointing) -> (peak, loaded): made-up numbers, easy to follow.
TABLE = {
    (672, "balanced", "float32", False): (13.5, 3.5),
    (672, "balanced", "float32", True): (7.5, 3.5),
    (1008, "balanced", "float32", False): (23.5, 3.5),
    (1008, "balanced", "float32", True): (9.5, 3.5),
    (1008, "balanced", "bfloat16", False): (13.0, 2.0),
    (1008, "balanced", "bfloat16", True): (6.0, 2.0),
    (1008, "minimal", "float32", False): (20.5, 3.5),
}


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(resources, "STEP_MEMORY_GB", TABLE)


def test_estimates_scale_the_step_by_pixels_and_batch(table):
    assert step_memory_gb(1008, "balanced", "float32", True, 1) == 9.5
    assert step_memory_gb(1008, "balanced", "float32", True, 2) == 3.5 + 2 * 6.0
    assert step_memory_gb(504, "balanced", "float32", False, 1) == pytest.approx(3.5 + 10.0 * (504 / 672) ** 2)
    assert step_memory_gb(1344, "balanced", "bfloat16", True, 1) == pytest.approx(2.0 + 4.0 * (1344 / 1008) ** 2)
    assert step_memory_gb(1008, None, "float32", False, 1) == 23.5   # own LoRA: the largest preset
    assert step_memory_gb(1008, "full", "float32", False, 1) is None


def test_advice_names_the_first_change_that_fits(table):
    assert memory_advice(20.0, 3.4, 1008, "balanced", "float32", True, 1) is None   # 9.5 fits in 23.4
    advice = memory_advice(8.0, 3.4, 1008, "balanced", "float32", False, 1)
    assert advice.startswith("a training step is estimated to need 23.5 GB (") and "11.4 GB" in advice
    assert "set training.activation_checkpointing=1," in advice
    assert "set model.dtype=bfloat16," in memory_advice(4.0, 3.4, 1008, "balanced", "float32", True, 1)
    assert "set training.batch_size=1," in memory_advice(8.0, 2.0, 1008, "balanced", "bfloat16", True, 3)
    nothing_alone = memory_advice(1.0, 1.0, 1008, "balanced", "bfloat16", False, 1)
    assert "change training.activation_checkpointing=1, model.image_size=672, the minimal preset" in nothing_alone
    assert memory_advice(0.5, 0.5, 672, "minimal", "bfloat16", True, 1) is None   # never measured: no advice


def test_the_measured_table_is_complete_for_what_it_has():
    """Every measured (px, preset) has the loaded model's size; the peak is above it."""
    for (px, preset, dtype, _), (peak, loaded) in resources.STEP_MEMORY_GB.items():
        assert preset in resources.PRESETS and dtype in ("float32", "bfloat16") and px % 14 == 0
        assert peak > loaded > 0


def test_presets_and_the_full_size_architecture_are_recognised():
    assert lora_preset(load_config("balanced").lora) == "balanced"
    assert lora_preset(load_config("balanced", ["lora.rank=8"]).lora) is None
    assert is_full_size(load_sam3_config("sam3")) and is_full_size(load_sam3_config("sam3", image_size=672))
    assert not is_full_size(load_sam3_config("sam3-tiny"))


def test_trainer_reports_free_memory_and_advice_before_the_first_step(table, monkeypatch, tmp_path, capsys):
    """CUDA stubbed: the line the trainer prints before its first step."""
    from sam3_lora.data.synth import synthesize
    from sam3_lora.recipes import train as train_module

    synthesize(tmp_path / "data", images_per_split={"train": 2}, image_size=112, seed=0)
    trainer = train_module.SAM3LoRATrainer(load_config("balanced", [
        "model.source=sam3-tiny", f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'run'}",
        "training.report_to=[]", "model.dtype=float32", "training.activation_checkpointing=0"])).setup()
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * 2**30, 12 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(3.5 * 2**30))
    trainer._report_device_memory(torch.device("cpu"))
    assert capsys.readouterr().out == ""   # nothing to say on a CPU
    trainer._report_device_memory(torch.device("cuda"))
    assert capsys.readouterr().out == "cuda: 6.0 GB free of 12.0 GB before the first step\n"   # not full size
    monkeypatch.setattr(train_module, "is_full_size", lambda config: True)
    trainer.image_size = 1008
    trainer._report_device_memory(torch.device("cuda"))
    out = capsys.readouterr().out
    assert out.startswith("cuda: 6.0 GB free of 12.0 GB before the first step; a training step is estimated "
                          "to need 23.5 GB")
    assert "set training.activation_checkpointing=1, or expect to run out of memory" in out


# ---- the measured table, where it is written down -------------------------------------------

ROOT = Path(__file__).parents[2]
COLUMNS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))


def newest_memory_table() -> dict[tuple[int, str], list[str]]:
    """(px, preset) -> the cells of the newest entry of BENCHMARKS.md's memory section."""
    section = (ROOT / "BENCHMARKS.md").read_text().split("## Peak memory of a LoRA training step", 1)[1]
    newest = section.split("\n## ", 1)[0].rsplit("\n### ", 1)[-1]
    return {(int(m[1]), m[2]): [c.strip() for c in m[3].split("|")]
            for m in re.finditer(r"^\| (\d+) \| (\w+) \|(.*)\|$", newest, re.MULTILINE)}


def test_readme_memory_table_is_the_newest_measured():
    """The README's "memory at 1008 px, batch 1" rows are BENCHMARKS.md's newest 1008 px rows
    (after a GPU run appends its table there, the README must follow it)."""
    table = newest_memory_table()
    assert {preset for px, preset in table if px == 1008} == set(resources.PRESETS)
    block = (ROOT / "README.md").read_text().split("Memory at 1008 px, batch 1", 1)[1]
    for preset in resources.PRESETS:
        row = re.search(rf"^\| {preset} \|(.*)\|$", block, re.MULTILINE)
        assert row, f"README has no memory row for {preset}"
        assert [c.strip() for c in row[1].split("|")] == table[1008, preset][:4], preset


def test_the_trainers_table_is_the_newest_measured():
    expected = {}
    for (px, preset), cells in newest_memory_table().items():
        loaded = dict(zip(("float32", "bfloat16"), cells[4].removesuffix(" GB").split(" / "), strict=True))
        for (dtype, checkpointing), cell in zip(COLUMNS, cells[:4], strict=True):
            if re.fullmatch(r"[\d.]+ GB", cell):
                expected[px, preset, dtype, checkpointing] = (float(cell.removesuffix(" GB")), float(loaded[dtype]))
    assert resources.STEP_MEMORY_GB == expected


def test_presets_fit_a_12_gb_card_at_1008_px_as_far_as_measured():
    """The presets' defaults follow the measured table: with the bfloat16 base that `auto`
    gives on a GPU, each needs at most 10 GB at 1008 px, batch 1 (2 GB of headroom on a 12 GB
    card), which takes their default activation checkpointing."""
    for preset in resources.PRESETS:
        training = load_config(preset).training
        assert load_config(preset).model.dtype == "auto" and training.batch_size == 1
        assert training.activation_checkpointing == 1, preset
        need = step_memory_gb(1008, preset, "bfloat16", True, 1)
        assert need is not None and need <= 10.0, (preset, need)
