import pytest
import torch
from torch import nn
from transformers import Sam3Model

from sam3_lora.config import COMPONENTS, LoRAConfig
from sam3_lora.errors import ConfigError
from sam3_lora.lora.apply import (
    apply_lora_to_model,
    count_parameters,
    lora_summary,
    resolve_targets,
)
from sam3_lora.model.loading import load_sam3_config


@pytest.fixture(scope="module")
def full_config():
    return load_sam3_config("sam3")


def full_model(config):
    """The full-size SAM3 architecture on the meta device: shapes only, built in a blink."""
    with torch.device("meta"):
        return Sam3Model(config)


def only(component, layers, rank=8):
    flags = {f"apply_to_{c}": c == component for c in COMPONENTS}
    return LoRAConfig(rank=rank, target_modules=layers, **flags)


# (component, layers) -> modules adapted, from the layer names of REFERENCE.md: ViT 32 layers,
# CLIP text 24, geometry encoder 3 layers (self + cross attention), DETR encoder 6 layers
# (self + cross), DETR decoder 6 layers (self, text cross, vision cross), mask decoder one
# prompt cross-attention.
REFERENCE_COUNTS = [
    ("vision_encoder", ["q_proj", "k_proj", "v_proj", "out_proj"], 128),
    ("vision_encoder", ["fc1", "fc2"], 64),
    ("vision_encoder", ["qkv"], 96),
    ("text_encoder", ["out_proj"], 24),
    ("text_encoder", ["linear1", "linear2"], 48),
    ("geometry_encoder", ["q_proj"], 6),
    ("detr_encoder", ["q_proj", "proj"], 24),
    ("detr_decoder", ["v_proj"], 18),
    ("detr_decoder", ["fc1"], 6),
    ("mask_decoder", ["q_proj", "k_proj", "v_proj", "o_proj"], 4),
]


@pytest.mark.parametrize("component, layers, modules", REFERENCE_COUNTS)
def test_component_counts_match_reference(full_config, component, layers, modules):
    model = apply_lora_to_model(full_model(full_config), only(component, layers), verbose=False)
    summary = lora_summary(model)
    assert list(summary) == [component] and summary[component][0] == modules


def test_vit_attention_rank8_trainable_count_matches_reference(full_config):
    model = apply_lora_to_model(full_model(full_config), only("vision_encoder", ["q_proj", "k_proj", "v_proj", "o_proj"]),
                                verbose=False)
    assert count_parameters(model).trainable == 2_097_152   # 128 modules x 8 x (1024 + 1024)


def test_all_covers_every_linear_of_the_six_components(full_config):
    model = full_model(full_config)
    everywhere = LoRAConfig(target_modules=["all"], **{f"apply_to_{c}": True for c in COMPONENTS})
    targets = resolve_targets(model, everywhere)
    outside = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.split(".")[0] not in COMPONENTS]
    linear_total = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert linear_total == 538   # REFERENCE.md
    assert sum(map(len, targets.values())) == linear_total - len(outside)
    assert {n.split(".")[0] for n in outside} == {"text_projection", "dot_product_scoring"}


def test_base_is_frozen_and_only_lora_trains(tiny):
    model = apply_lora_to_model(tiny.model, LoRAConfig(target_modules=["all"], apply_to_mask_decoder=True), verbose=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("layers, message", [
    (["q_proj", "attn"], "unknown layer name"),
    (["mlp"], "valid names: q_proj"),
])
def test_unknown_layer_names_list_the_valid_ones(tiny, layers, message):
    with pytest.raises(ConfigError, match=message):
        apply_lora_to_model(tiny.model, LoRAConfig(target_modules=layers), verbose=False)


def test_selection_matching_nothing_is_an_error(tiny):
    with pytest.raises(ConfigError, match="match no Linear layer in mask_decoder; layer names there"):
        apply_lora_to_model(tiny.model, only("mask_decoder", ["fc1"]), verbose=False)
    with pytest.raises(ConfigError, match="no component is switched on"):
        apply_lora_to_model(tiny.model, LoRAConfig(apply_to_vision_encoder=False), verbose=False)


@pytest.mark.parametrize("settings, check", [
    ({"rank": 4, "alpha": 12}, lambda layer: layer.r["default"] == 4 and layer.scaling["default"] == 3.0),
    ({"rank": 4, "alpha": 12, "use_rslora": True}, lambda layer: layer.scaling["default"] == 6.0),
    ({"dropout": 0.2}, lambda layer: layer.lora_dropout["default"].p == 0.2),
    ({"use_dora": True}, lambda layer: "default" in layer.lora_magnitude_vector),
])
def test_lora_settings_reach_peft(tiny, settings, check):
    model = apply_lora_to_model(tiny.model, LoRAConfig(**settings), verbose=False)
    layer = model.base_model.model.vision_encoder.backbone.layers[0].attention.q_proj
    assert check(layer)


def test_summary_is_printed(tiny, capsys):
    apply_lora_to_model(tiny.model, LoRAConfig(apply_to_mask_decoder=True))
    printed = capsys.readouterr().out
    assert "vision_encoder" in printed and "mask_decoder" in printed and "% trainable" in printed


def test_seed_api_on_a_plain_torch_model():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(8, 16))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(16, 4))
    inputs = torch.randn(3, 8)
    before = model(inputs).detach()
    adapted = apply_lora_to_model(model, LoRAConfig(rank=2, target_modules=["fc1"]), verbose=False)
    total, trainable, percent = count_parameters(adapted)
    assert trainable == 2 * (8 + 16) and total == 8 * 16 + 16 + 16 * 4 + 4 + trainable
    assert percent == pytest.approx(100 * trainable / total)
    torch.testing.assert_close(adapted(inputs), before)   # LoRA B starts at zero
    adapted(inputs).sum().backward()
    assert adapted.base_model.model.fc1.lora_B["default"].weight.grad is not None
    assert adapted.base_model.model.fc2.weight.grad is None


def test_readme_preset_table_matches_the_architecture(full_config):
    """The README's numbers come from bench/lora_presets.py; they must stay true."""
    import re
    from pathlib import Path

    from sam3_lora.config import load_config

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for preset in ("minimal", "balanced", "full"):
        row = re.search(rf"^\| {preset} \| (\d+) \| (\d+) \| ([\d,]+) \| ([\d.]+)% \|", readme, re.MULTILINE)
        assert row, f"README has no table row for {preset}"
        model = apply_lora_to_model(full_model(full_config), load_config(preset).lora, verbose=False)
        count = count_parameters(model)
        assert int(row[1]) == load_config(preset).lora.rank
        assert int(row[2]) == sum(m for m, _ in lora_summary(model).values())
        assert int(row[3].replace(",", "")) == count.trainable
        assert float(row[4]) == round(count.percent, 3)


def test_public_api_is_importable_from_the_package():
    import sam3_lora

    assert sam3_lora.apply_lora_to_model is apply_lora_to_model
    assert sam3_lora.LoRAConfig is LoRAConfig


@pytest.fixture(scope="module")
def full_tracker():
    """The full-size tracker (SAM3's ViT, prompt encoder, mask decoder) on the meta device."""
    from transformers import Sam3TrackerModel

    from sam3_lora.model.tracker import load_tracker_config

    with torch.device("meta"):
        return Sam3TrackerModel(load_tracker_config("sam3"))


# The tracker's mask decoder: a two-layer two-way transformer (self, token-to-image and
# image-to-token attention, an MLP each) and a final token-to-image attention; MLPs (proj_in,
# proj_out) in the transformer, in its 4 hypernetworks, the IoU head and the object-score head.
TRACKER_COUNTS = [
    ("vision_encoder", ["q_proj", "v_proj"], 64),
    ("mask_decoder", ["q_proj", "k_proj", "v_proj", "o_proj"], 28),
    ("mask_decoder", ["fc1", "fc2"], 16),
    ("mask_decoder", ["all"], 50),
    ("prompt_encoder", ["all"], 3),
]


@pytest.mark.parametrize("component, layers, modules", TRACKER_COUNTS)
def test_tracker_component_counts(full_tracker, component, layers, modules):
    model = apply_lora_to_model(full_tracker, only(component, layers), verbose=False)
    try:
        summary = lora_summary(model)
        assert list(summary) == [component] and summary[component][0] == modules
    finally:
        model.unload()   # the module fixture is shared: give it back bare


def test_all_reaches_every_linear_of_the_tracker_heads(full_tracker):
    everywhere = LoRAConfig(target_modules=["all"], **{f"apply_to_{c}": True for c in COMPONENTS})
    targets = resolve_targets(full_tracker, everywhere)
    decoder_linears = [n for n, m in full_tracker.named_modules()
                       if isinstance(m, nn.Linear) and n.startswith("mask_decoder.")]
    assert sorted(targets["mask_decoder"]) == sorted(decoder_linears)
    assert any(".iou_prediction_head." in n for n in decoder_linears)
    assert targets["prompt_encoder"] == [f"prompt_encoder.mask_embed.conv{i}" for i in (1, 2, 3)]
    assert set(targets) == {"vision_encoder", "prompt_encoder", "mask_decoder"}   # no detector parts


def test_tracker_lora_trains_through_a_click():
    from sam3_lora.model.tracker import load_tracker

    config = LoRAConfig(target_modules=["all"], apply_to_prompt_encoder=True, apply_to_mask_decoder=True)
    model = apply_lora_to_model(load_tracker("sam3-tiny").model, config, verbose=False)
    out = model(pixel_values=torch.randn(1, 3, 112, 112), input_points=torch.tensor([[[[50.0, 60.0]]]]),
                input_labels=torch.tensor([[[1]]]), input_masks=torch.zeros(1, 1, 32, 32))
    out.pred_masks.sum().backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None for n, p in model.named_parameters() if "mask_embed.conv1.lora_B" in n)


def test_the_heads_preset_runs_nothing_backward_through_the_image_and_text_encoders(tiny, tiny_inputs):
    """heads: LoRA on the four heads only; the ViT's output needs no gradient, so autograd
    keeps none of its activations, while every head gets LoRA gradients."""
    from sam3_lora.config import load_config

    model = apply_lora_to_model(tiny.model, load_config("heads").lora, verbose=False)
    trainable = {name.removeprefix("base_model.model.").split(".", 1)[0]
                 for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder"}
    seen = {}

    def record(module, args, output):
        seen["vision"] = output.last_hidden_state.requires_grad

    model.base_model.model.vision_encoder.register_forward_hook(record)
    boxes = {"input_boxes": torch.tensor([[[0.5, 0.5, 0.4, 0.4]]] * 2), "input_boxes_labels": torch.ones(2, 1, dtype=torch.long)}
    outputs = model(**tiny_inputs, **boxes)
    (outputs.pred_logits.sum() + outputs.pred_masks.mean()).backward()
    assert seen == {"vision": False}
    grads = {name.split(".", 3)[2] for name, parameter in model.named_parameters()
             if "lora_B" in name and parameter.grad is not None and parameter.grad.abs().sum() > 0}
    assert grads == trainable
