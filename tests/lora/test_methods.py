"""Every ``lora.method`` end to end on the tiny model: trains, saves, reloads bit-exact, switches
by name beside a second adapter, merges (or refuses to: the bottleneck adapter); AdaLoRA's ranks
move and are saved; bottleneck adapters start equal to the base and switch beside LoRA."""

import pytest
import torch

from sam3_lora.config import MERGE_REFUSALS, METHODS, LoRAConfig, load_config
from sam3_lora.errors import AdapterError, ConfigError
from sam3_lora.lora.adapter import load_adapter, load_lora_weights, read_metadata, save_adapter
from sam3_lora.lora.apply import (
    adapter_ranks,
    apply_lora_to_model,
    format_ranks,
    preview,
    training_hooks,
)
from sam3_lora.model.adapter_parameters import is_adapter_parameter
from sam3_lora.model.loading import load_sam3
from tests.conftest import TINY_CONFIG

# Attention and the MLPs' second layers (IA3 scales their input) of the ViT and the DETR
# decoder; every method's keys at their defaults but the rank (IA3 has none).
TARGETS = {"target_modules": ["q_proj", "v_proj", "fc2"], "apply_to_detr_decoder": True}
STEPS = 5
# How far a reloaded adapter's answers may be from the trained model's: none, but AdaLoRA's,
# whose saved tensors leave out the ranks its allocation dropped (masked to zero in training),
# so the matmuls' inner size and summation order change: float32 rounding. (Its reloads are
# bit-exact to each other.)
RELOAD_TOLERANCE = {method: 0.0 for method in METHODS} | {"adalora": 1e-6}


def method_config(method: str, **keys) -> LoRAConfig:
    rank = {} if method == "ia3" else {"rank": 4}
    return LoRAConfig(method=method, **TARGETS, **(rank | keys))


def fresh_base():
    return load_sam3("sam3-tiny", seed=0).model


def toy_loss(outputs) -> torch.Tensor:
    """A loss every adapted layer reaches: pushes scores and boxes up (the task does not matter)."""
    return -(outputs.pred_logits.mean() + outputs.pred_boxes.mean() + outputs.pred_masks.mean())


def train(model, inputs, steps: int = STEPS) -> list[float]:
    """``steps`` AdamW steps on ``toy_loss`` with the method's hooks, as the trainer runs them;
    the losses, and the model left in eval mode. (VeRA's scales start at zero and move the
    output slowly: a high learning rate shows each method learning in a few steps.)"""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    hooks = training_hooks(model, steps)
    losses = []
    model.train()
    for step in range(steps):
        loss = toy_loss(model(**inputs))
        loss.backward()
        optimizer.step()
        for hook in hooks:
            hook(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_saves_reloads_switches_and_merges(method, tmp_path, tiny_inputs, predict, differ):
    model = apply_lora_to_model(fresh_base(), method_config(method), verbose=False)
    assert all(is_adapter_parameter(n) for n, p in model.named_parameters() if p.requires_grad)
    losses = train(model, tiny_inputs)
    assert losses[-1] < losses[0] - 1e-4, losses   # it learns (a learning rate of 0 would fail this)
    trained = predict(model)
    base = predict(fresh_base())
    assert differ(trained, base) > 1e-4
    save_adapter(model, tmp_path / "trained", base_source="sam3-tiny")
    assert read_metadata(tmp_path / "trained")["method"] == method
    save_adapter(apply_lora_to_model(fresh_base(), method_config(method), verbose=False), tmp_path / "untrained")

    reloaded = load_adapter(fresh_base(), tmp_path / "trained", adapter_name="trained")
    assert differ(predict(reloaded), trained) <= RELOAD_TOLERANCE[method]
    trained = predict(reloaded)
    assert differ(predict(load_adapter(fresh_base(), tmp_path / "trained")), trained) == 0.0   # bit-exact
    reloaded = load_adapter(reloaded, tmp_path / "untrained", adapter_name="untrained")
    reloaded.set_adapter("untrained")
    assert differ(predict(reloaded), trained) > 1e-4   # the other adapter answers
    reloaded.set_adapter("trained")
    assert differ(predict(reloaded), trained) == 0.0
    if method in MERGE_REFUSALS:   # PEFT's merge would drop the adapter silently; its layer refuses
        with pytest.raises(ValueError, match="no weight of the base can hold it"):
            reloaded.merge_and_unload()
        return
    merged = reloaded.merge_and_unload()
    assert not any(is_adapter_parameter(n) for n, _ in merged.named_parameters())
    assert differ(predict(merged), trained) < 1e-5   # folded into the weights: float32 rounding


def test_adalora_ranks_move_are_printed_and_saved(tmp_path, tiny_inputs, predict, differ):
    config = method_config("adalora", rank=2, adalora_init_rank=6)
    model = apply_lora_to_model(fresh_base(), config, verbose=False)
    assert set(adapter_ranks(model).values()) == {6}   # every layer starts at adalora_init_rank
    train(model, tiny_inputs, steps=10)
    ranks = adapter_ranks(model)
    assert len(set(ranks.values())) > 1, ranks   # the allocation moved rank between layers
    assert sum(ranks.values()) == 2 * len(ranks)   # to the budget: lora.rank on average
    vit = [rank for layer, rank in ranks.items() if layer.startswith("vision_encoder.")]
    assert format_ranks(ranks).startswith(f"ranks: vision_encoder {sum(vit)} over {len(vit)} layers (mean ")
    save_adapter(model, tmp_path / "a", base_source="sam3-tiny")
    assert read_metadata(tmp_path / "a")["ranks"] == ranks
    reloaded = load_adapter(fresh_base(), tmp_path / "a")
    assert adapter_ranks(reloaded) == ranks
    assert differ(predict(reloaded), predict(model)) <= RELOAD_TOLERANCE["adalora"]


def test_a_pruned_adalora_adapter_resumes_into_its_training_shape(tmp_path, tiny_inputs, predict, differ):
    """A checkpoint holds only the ranks AdaLoRA kept; resuming (``load_lora_weights`` into the
    run's freshly applied adapter) puts them back at their places, the dropped ones zero."""
    config = method_config("adalora", rank=2, adalora_init_rank=6)
    model = apply_lora_to_model(fresh_base(), config, verbose=False)
    train(model, tiny_inputs, steps=10)
    save_adapter(model, tmp_path / "checkpoint")
    resumed = load_lora_weights(apply_lora_to_model(fresh_base(), config, verbose=False), tmp_path / "checkpoint")
    assert differ(predict(resumed), predict(model)) == 0.0   # the same tensors as in training
    assert adapter_ranks(resumed) == adapter_ranks(model)


def test_adalora_allocates_when_a_layer_got_no_gradient(tiny_inputs):
    """A layer no batch of the step reached (its branch not run) has no gradient: PEFT's
    allocator raised a TypeError on it in the PEFT study (bench/peft_study.py); it scores 0."""
    model = apply_lora_to_model(fresh_base(), method_config("adalora", rank=2, adalora_init_rank=6), verbose=False)
    hooks = training_hooks(model, 10)
    toy_loss(model(**tiny_inputs)).backward()
    untouched = [p for n, p in model.named_parameters() if p.requires_grad and ".fc2." in n]
    assert untouched
    for parameter in untouched:
        parameter.grad = None
    for hook in hooks:
        hook(0)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in untouched)


def test_adalora_needs_steps_to_allocate(tiny):
    model = apply_lora_to_model(tiny.model, method_config("adalora"), verbose=False)
    with pytest.raises(ConfigError, match="lora.method=adalora needs at least 2 optimiser steps.*has 1"):
        training_hooks(model, 1)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "adalora"])
def test_other_methods_add_no_training_hook(method, tiny):
    model = apply_lora_to_model(tiny.model, method_config(method), verbose=False)
    assert training_hooks(model, 10) == [] and adapter_ranks(model) is None


@pytest.mark.parametrize(("override", "message"), [
    ("lora.use_dora=true", "lora.use_dora=True does not apply to lora.method=loha .only to lora."),
    ("lora.dropout=0.1", "lora.dropout=0.1 does not apply to lora.method=loha .only to lora, adalora, vera."),
    ("lora.adalora_init_rank=12", "lora.adalora_init_rank=12 does not apply to lora.method=loha"),
])
def test_a_key_the_method_does_not_read_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(TINY_CONFIG, ["lora.method=loha", override])
    assert "\n" not in str(error.value) and str(TINY_CONFIG) in str(error.value)


def test_adalora_must_start_above_its_final_rank():
    with pytest.raises(ConfigError, match="lora.adalora_init_rank=8 is not above lora.rank=8"):
        load_config(TINY_CONFIG, ["lora.method=adalora", "lora.adalora_init_rank=8"])


def test_a_python_built_config_is_checked_too(tiny):
    with pytest.raises(ConfigError, match="lora.rank=4 does not apply to lora.method=ia3"):
        apply_lora_to_model(tiny.model, LoRAConfig(method="ia3", rank=4), verbose=False)


def test_a_layer_the_method_cannot_adapt_is_one_line():
    """VeRA adapts Linear layers only; the tracker's prompt encoder has convolutions alone."""
    from sam3_lora.model.tracker import load_tracker

    config = LoRAConfig(method="vera", target_modules=["all"], apply_to_vision_encoder=False,
                        apply_to_prompt_encoder=True)
    with pytest.raises(ConfigError, match="lora.method=vera: PEFT cannot adapt the selected layers .No layers types"):
        apply_lora_to_model(load_tracker("sam3-tiny").model, config, verbose=False)


def test_configs_without_a_method_stay_lora():
    assert load_config(TINY_CONFIG).lora.method == "lora"


def test_an_adapter_of_another_method_cannot_join(tmp_path, tiny):
    save_adapter(apply_lora_to_model(fresh_base(), method_config("loha"), verbose=False), tmp_path / "loha")
    model = apply_lora_to_model(tiny.model, method_config("lora"), verbose=False)
    with pytest.raises(AdapterError, match="a loha adapter cannot join this model's lora adapters"):
        load_adapter(model, tmp_path / "loha", adapter_name="other")


@pytest.mark.parametrize("method", METHODS)
def test_info_prints_each_methods_table(method):
    rank = [] if method == "ia3" else ["lora.rank=4"]
    config = load_config(TINY_CONFIG, [f"lora.method={method}", *rank])
    text = preview(config)
    assert f"method {method}" in text
    table = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert int(table["vision_encoder"][1]) > 0 and int(table["total"][2].replace(",", "")) > 0


def test_readme_method_table_matches_the_architecture():
    """The README's trainable counts per method, on the full-size SAM3 (meta device: shapes only)."""
    import re
    from pathlib import Path

    from transformers import Sam3Model

    from sam3_lora.lora.apply import count_parameters
    from sam3_lora.model.loading import load_sam3_config

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    architecture = load_sam3_config("sam3")
    for method in METHODS:
        row = re.search(rf"^\| `{method}` \|.*\| ([\d,]+)[^|]*\|$", readme, re.MULTILINE)
        assert row, f"README has no table row for {method}"
        layers = {"ia3": ["lora.target_modules=[q_proj,v_proj,fc2]"],
                  "adapter": ["lora.target_modules=[fc2,out_proj]"]}.get(method, [])
        config = load_config(None, [f"lora.method={method}", *layers]).lora
        with torch.device("meta"):
            model = apply_lora_to_model(Sam3Model(architecture), config, verbose=False)
        assert int(row[1].replace(",", "")) == count_parameters(model).trainable, method


# Bottleneck adapters (lora.method=adapter) after each block's MLP and attention, as SAM-Adapter.
BOTTLENECK = LoRAConfig(method="adapter", rank=4, target_modules=["fc2", "out_proj"], apply_to_detr_decoder=True)


def test_a_bottleneck_adapter_starts_equal_to_its_base_and_wraps_the_outputs(tiny_inputs, predict, differ):
    model = apply_lora_to_model(fresh_base(), BOTTLENECK, verbose=False)
    assert differ(predict(model), predict(fresh_base())) == 0.0   # up starts at zero
    fc2 = model.get_base_model().vision_encoder.backbone.layers[0].mlp.fc2
    width = fc2.base_layer.out_features
    assert fc2.lora_bottleneck_down["default"].weight.shape == (4, width)   # the output's features -> rank
    assert fc2.lora_bottleneck_up["default"].weight.shape == (width, 4)
    assert fc2.bottleneck_scale["default"] == BOTTLENECK.alpha / 4
    with torch.no_grad():
        fc2.lora_bottleneck_up["default"].bias.fill_(1.0)   # up(...) = 1: y + scale
        x = torch.randn(3, fc2.in_features)
        assert torch.allclose(fc2(x), fc2.base_layer(x) + BOTTLENECK.alpha / 4)


def test_a_bottleneck_adapter_switches_by_name_beside_a_lora_adapter(tmp_path, tiny_inputs, predict, differ):
    """Both on the same layers (``fc2``): a LoRA adapter joins the bottleneck adapter's layers;
    each answers as it does alone, and with adapters disabled the base answers."""
    bottleneck = apply_lora_to_model(fresh_base(), BOTTLENECK, verbose=False)
    train(bottleneck, tiny_inputs, steps=2)
    lora = apply_lora_to_model(fresh_base(), LoRAConfig(rank=4, target_modules=["q_proj", "fc2"]), verbose=False)
    train(lora, tiny_inputs, steps=2)
    save_adapter(bottleneck, tmp_path / "bottleneck")
    save_adapter(lora, tmp_path / "lora")
    alone = {"bottleneck": predict(bottleneck), "plain": predict(lora)}

    both = load_adapter(fresh_base(), tmp_path / "bottleneck", adapter_name="bottleneck")
    both = load_adapter(both, tmp_path / "lora", adapter_name="plain")
    for name in ("plain", "bottleneck", "plain"):
        both.set_adapter(name)
        assert differ(predict(both), alone[name]) == 0.0, name
    with both.disable_adapter():
        assert differ(predict(both), predict(fresh_base())) == 0.0
    save_adapter(both, tmp_path / "again", adapter_name="bottleneck")   # saved from the shared layers
    assert read_metadata(tmp_path / "again")["method"] == "adapter"
    assert differ(predict(load_adapter(fresh_base(), tmp_path / "again")), alone["bottleneck"]) == 0.0
    both.set_adapter("bottleneck")
    both.delete_adapter("plain")   # from the layers the two shared
    assert differ(predict(both), alone["bottleneck"]) == 0.0


def test_a_bottleneck_adapter_cannot_join_a_layer_lora_holds_first(tmp_path):
    save_adapter(apply_lora_to_model(fresh_base(), BOTTLENECK, verbose=False), tmp_path / "bottleneck")
    save_adapter(apply_lora_to_model(fresh_base(), LoRAConfig(rank=4), verbose=False), tmp_path / "qv")
    save_adapter(apply_lora_to_model(fresh_base(), LoRAConfig(rank=4, target_modules=["fc2"]), verbose=False),
                 tmp_path / "fc2")
    model = load_adapter(fresh_base(), tmp_path / "qv")   # other layers: the bottleneck adapter joins
    model = load_adapter(model, tmp_path / "bottleneck", adapter_name="bottleneck")
    assert read_metadata(save_adapter(model, tmp_path / "again", adapter_name="bottleneck"))["method"] == "adapter"
    model = load_adapter(fresh_base(), tmp_path / "fc2")
    with pytest.raises(AdapterError, match=r"fc2 already carries a LoRA adapter.*load this adapter first") as error:
        load_adapter(model, tmp_path / "bottleneck", adapter_name="bottleneck")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("override", "message"), [
    ("lora.dropout=0.1", "lora.dropout=0.1 does not apply to lora.method=adapter .only to lora, adalora, vera."),
    ("lora.use_dora=true", "lora.use_dora=True does not apply to lora.method=adapter .only to lora."),
])
def test_a_key_the_bottleneck_adapter_does_not_read_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(TINY_CONFIG, ["lora.method=adapter", override])
    assert "\n" not in str(error.value)


def test_the_bottleneck_scale_is_alpha_over_rank():
    """``lora.alpha`` sets what a bottleneck adapter adds: ``alpha / rank`` times its up-projection."""
    x = torch.randn(3, 32)
    added = []
    for alpha in (4.0, 8.0):
        layer = torch.nn.Sequential(torch.nn.Linear(32, 16))
        model = apply_lora_to_model(layer, LoRAConfig(method="adapter", rank=4, alpha=alpha, target_modules=["all"]),
                                    verbose=False)
        adapted = model.get_base_model()[0]
        with torch.no_grad():
            adapted.lora_bottleneck_up["default"].bias.fill_(1.0)   # up(...) = 1
            added.append(adapted(x) - adapted.base_layer(x))
    assert torch.allclose(added[0], torch.full_like(added[0], 1.0)) and torch.allclose(added[1], 2 * added[0])


def test_a_bottleneck_adapter_with_a_wrong_tensor_is_one_line(tmp_path, tiny):
    from safetensors.torch import load_file, save_file

    folder = save_adapter(apply_lora_to_model(fresh_base(), BOTTLENECK, verbose=False), tmp_path / "a")
    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_bottleneck_up.weight"))
    tensors[key] = torch.zeros(3, 4)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"lora_bottleneck_up.weight: shape \(3, 4\) does not fit the layer"):
        load_adapter(tiny.model, folder)
    metadata = read_metadata(folder) | {"method": "lora"}
    (folder / "sam3_lora.json").write_text(__import__("json").dumps(metadata))
    with pytest.raises(AdapterError, match="is a bottleneck adapter's tensor, but sam3_lora.json says method lora"):
        load_adapter(tiny.model, folder)


def test_the_tracker_takes_bottleneck_adapters_on_its_linear_layers_only(tmp_path):
    from sam3_lora.model.tracker import load_tracker

    config = LoRAConfig(method="adapter", rank=4, target_modules=["all"], apply_to_mask_decoder=True)
    model = apply_lora_to_model(load_tracker("sam3-tiny").model, config, verbose=False)
    clicks = {"pixel_values": torch.randn(1, 3, 112, 112), "input_points": torch.tensor([[[[50.0, 60.0]]]]),
              "input_labels": torch.tensor([[[1]]])}
    bare = load_tracker("sam3-tiny").model(**clicks).pred_masks
    assert torch.equal(model(**clicks).pred_masks, bare)   # starts equal to the base
    train_step = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model(**clicks).pred_masks.mean().backward()
    train_step.step()
    with torch.no_grad():
        trained = model(**clicks).pred_masks
    assert not torch.equal(trained, bare)
    save_adapter(model, tmp_path / "tracker")
    with torch.no_grad():
        assert torch.equal(load_adapter(load_tracker("sam3-tiny").model, tmp_path / "tracker")(**clicks).pred_masks,
                           trained)
    only_convolutions = LoRAConfig(method="adapter", target_modules=["all"], apply_to_vision_encoder=False,
                                   apply_to_prompt_encoder=True)
    with pytest.raises(ConfigError, match="match no Linear layer in prompt_encoder"):
        apply_lora_to_model(load_tracker("sam3-tiny").model, only_convolutions, verbose=False)
