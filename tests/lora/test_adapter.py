import json
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Sam3Model

from sam3_lora.config import LoRAConfig
from sam3_lora.errors import AdapterError
from sam3_lora.lora.adapter import (
    load_adapter,
    load_lora_weights,
    read_metadata,
    save_adapter,
    save_lora_weights,
)
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.loading import load_sam3, tiny_config

SELECTION = LoRAConfig(rank=4, target_modules=["all"], apply_to_detr_decoder=True, apply_to_mask_decoder=True)


def trained_adapter(model, selection=SELECTION, seed=0):
    """LoRA with random B matrices, standing in for a trained adapter (B=0 would be a no-op)."""
    adapted = apply_lora_to_model(model, selection, verbose=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapted.eval()


def fresh_base():
    return load_sam3("sam3-tiny", seed=0).model


def test_save_reload_and_merge_give_the_adapted_outputs(tmp_path, tiny, predict, differ):
    adapted = trained_adapter(tiny.model)
    expected = predict(adapted)
    assert differ(expected, predict(fresh_base())) > 1e-3   # the adapter changes predictions
    save_adapter(adapted, tmp_path / "adapter", base_source="sam3-tiny", prompts=["red circle", "red circle"])
    reloaded = load_adapter(fresh_base(), tmp_path / "adapter")
    assert differ(predict(reloaded), expected) == 0.0            # same float ops: bit-identical
    merged = reloaded.merge_and_unload()
    assert isinstance(merged, Sam3Model)
    assert differ(predict(merged), expected) < 1e-5              # W + BA folded: float32 rounding


def test_adapter_folder_describes_itself(tmp_path, tiny):
    folder = save_adapter(trained_adapter(tiny.model), tmp_path / "a", base_source="sam3-tiny", prompts=["b", "a"])
    files = sorted(p.name for p in folder.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "sam3_lora.json"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    metadata = read_metadata(folder)
    assert metadata["base_model"]["source"] == "sam3-tiny"
    assert metadata["base_model"]["architecture"]["vit"] == "2x64"
    assert metadata["lora"]["rank"] == 4 and metadata["lora"]["apply_to_mask_decoder"] is True
    assert metadata["prompts"] == ["a", "b"]
    saved_modules = {key.removeprefix("base_model.model.").split(".")[0]
                     for key in safe_open(folder / "adapter_model.safetensors", "pt").keys()}  # noqa: SIM118
    assert saved_modules == {"detr_decoder", "mask_decoder", "vision_encoder"}
    assert not list(tmp_path.glob(".a.*")), "staging folder left behind"


def test_saving_over_an_adapter_replaces_it(tmp_path, tiny):
    save_adapter(trained_adapter(tiny.model, seed=0), tmp_path / "a")
    first = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    save_adapter(trained_adapter(fresh_base(), seed=1), tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() != first


def test_seed_api_round_trip(tmp_path, tiny, predict, differ):
    adapted = trained_adapter(tiny.model)
    save_lora_weights(adapted, tmp_path / "lora")
    target = apply_lora_to_model(fresh_base(), SELECTION, verbose=False).eval()
    assert load_lora_weights(target, tmp_path / "lora") is target
    assert differ(predict(target), predict(adapted)) == 0.0


def test_other_architecture_is_refused_naming_both(tmp_path, tiny):
    save_adapter(trained_adapter(tiny.model), tmp_path / "a", base_source="sam3-tiny")
    config = tiny_config()
    config.detr_decoder_config.num_queries = 10
    with pytest.raises(AdapterError, match=r"trained on base sam3-tiny \(.*queries 20\), but the model is \(.*queries 10\)"):
        load_adapter(Sam3Model(config), tmp_path / "a")


def test_other_rank_is_refused_naming_both(tmp_path, tiny):
    save_adapter(trained_adapter(tiny.model), tmp_path / "a")
    rank8 = apply_lora_to_model(fresh_base(), SELECTION.model_copy(update={"rank": 8}), verbose=False)
    with pytest.raises(AdapterError, match="adapter has r=4 but the model's LoRA has r=8"):
        load_lora_weights(rank8, tmp_path / "a")


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such adapter folder"),
    (lambda p: p.mkdir(), "missing adapter_config.json, adapter_model.safetensors"),
])
def test_not_an_adapter(tmp_path, make, message):
    make(tmp_path / "x")
    with pytest.raises(AdapterError, match=message):
        load_adapter(fresh_base(), tmp_path / "x")


def test_pickle_checkpoints_are_never_read(tmp_path):
    legacy = tmp_path / "best_lora_weights.pt"
    legacy.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AdapterError, match="pickle checkpoints are not read"):
        load_adapter(fresh_base(), legacy)


def test_two_named_adapters_share_one_base(tmp_path, tiny, predict, differ):
    first, second = trained_adapter(tiny.model, seed=0), None
    expected_first = predict(first)
    save_adapter(first, tmp_path / "first")
    second = trained_adapter(fresh_base(), SELECTION.model_copy(update={"rank": 2}), seed=1)
    expected_second = predict(second)
    save_adapter(second, tmp_path / "second")
    model = load_adapter(fresh_base(), tmp_path / "first", adapter_name="first")
    model = load_adapter(model, tmp_path / "second", adapter_name="second")
    model.set_adapter("second")
    assert differ(predict(model), expected_second) == 0.0
    model.set_adapter("first")
    assert differ(predict(model), expected_first) == 0.0


# ---- damaged and malformed adapters: one line each, before any tensor is copied --------------


def edit_json(name, change):
    def edit(folder):
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return edit


def edit_tensors(change):
    def edit(folder):
        path = folder / "adapter_model.safetensors"
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)
    return edit


def first_key(tensors, part):
    return next(k for k in sorted(tensors) if part in k)


MALFORMED = {
    "sam3_lora.json a list": (edit_json("sam3_lora.json", lambda m: [1, 2]), "sam3_lora.json: expected a JSON object"),
    "base_model a string": (edit_json("sam3_lora.json", lambda m: {**m, "base_model": "sam3"}),
                            "base_model: expected an object"),
    "architecture a list": (edit_json("sam3_lora.json", lambda m: {**m, "base_model": {"architecture": [1]}}),
                            "base_model.architecture: expected an object of sizes"),
    "sam3_lora.json not UTF-8": (lambda f: (f / "sam3_lora.json").write_bytes(b'{"format": "\xff"}'),
                                 "sam3_lora.json: not UTF-8 text"),
    "an unknown format": (edit_json("sam3_lora.json", lambda m: {**m, "format": "sam3-lora-adapter/9"}),
                          "sam3_lora.json: format 'sam3-lora-adapter/9', this sam3-lora reads sam3-lora-adapter/1"),
    "a model folder's format": (edit_json("sam3_lora.json", lambda m: {**m, "format": "sam3-lora-model/1"}),
                                "format 'sam3-lora-model/1', this sam3-lora reads sam3-lora-adapter/1"),
    "invalid lora section": (edit_json("sam3_lora.json", lambda m: {**m, "lora": {"rank": "x"}}),
                             "sam3_lora.json: lora.rank: Input should be a valid integer"),
    "adapter_config.json not JSON": (lambda f: (f / "adapter_config.json").write_text("{not json"),
                                     "adapter_config.json: not valid JSON"),
    "adapter_config.json a list": (lambda f: (f / "adapter_config.json").write_text("[]"),
                                   "adapter_config.json: expected a JSON object"),
    "rank of a billion": (edit_json("adapter_config.json", lambda c: {**c, "r": 10**9}),
                          "r is 1000000000, not a rank from 1 to 1024"),
    "not a method of lora.method": (edit_json("adapter_config.json", lambda c: {**c, "peft_type": "OFT"}),
                                    "peft_type is OFT, none of LORA, LOHA, LOKR, ADALORA, VERA, IA3"),
    "layer replication": (edit_json("adapter_config.json", lambda c: {**c, "layer_replication": [[0, 1]]}),
                          "layer_replication is set"),
    "wrong tensor shape": (edit_tensors(lambda t: t.__setitem__(first_key(t, "lora_A"), torch.zeros(3, 5))),
                           r"shape \(3, 5\) does not fit the layer"),
    "a tensor missing": (edit_tensors(lambda t: t.pop(first_key(t, "lora_B"))), "LoRA pair of .* is incomplete"),
    "NaN weights": (edit_tensors(lambda t: t[first_key(t, "lora_B")].fill_(float("nan"))),
                    "1 tensor.s. hold NaN or infinite values"),
    "infinite weights": (edit_tensors(lambda t: t[first_key(t, "lora_A")].__setitem__((0, 0), float("inf"))),
                         "hold NaN or infinite values"),
    "truncated safetensors": (lambda f: (f / "adapter_model.safetensors").write_bytes(
        (f / "adapter_model.safetensors").read_bytes()[:100]), "not a readable safetensors file, truncated"),
    "only pytorch_model.bin": (lambda f: [p.unlink() for p in f.iterdir()] and (f / "pytorch_model.bin").write_bytes(b"x"),
                               "holds pytorch_model.bin, a pickle file, which is not read"),
}


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "adapter"
    save_adapter(trained_adapter(load_sam3("sam3-tiny", seed=0).model), folder, base_source="sam3-tiny")
    return folder


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_adapters_are_one_line_errors(tmp_path, good_adapter, case):
    damage, message = MALFORMED[case]
    folder = tmp_path / "adapter"
    shutil.copytree(good_adapter, folder)
    damage(folder)
    for load in (lambda: load_adapter(fresh_base(), folder),
                 lambda: load_lora_weights(apply_lora_to_model(fresh_base(), SELECTION, verbose=False), folder)):
        with pytest.raises(AdapterError, match=message) as error:
            load()
        assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_model_folders_with_nan_weights_are_refused(tmp_path):
    from sam3_lora.errors import ModelLoadError
    from sam3_lora.model.folders import load_model_weights, write_model

    loaded = load_sam3("sam3-tiny", seed=0)
    with torch.no_grad():
        next(loaded.model.parameters()).view(-1)[0] = float("nan")
    write_model(loaded.model, loaded.tokenizer, tmp_path)
    with pytest.raises(ModelLoadError, match=r"model.source .*: 1 tensor.s. hold NaN or infinite values"):
        load_sam3(str(tmp_path))
    with pytest.raises(ModelLoadError, match="model.safetensors: 1 tensor.s. hold NaN"):
        load_model_weights(fresh_base(), tmp_path)


def test_peft_deprecation_warnings_stay_inside(tmp_path, tiny):
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing``: users must not see it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter(trained_adapter(tiny.model), tmp_path / "a")
        load_adapter(fresh_base(), tmp_path / "a")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


@pytest.mark.parametrize("trained_on, loaded_on", [("nf4", "none"), ("none", "nf4"), ("int8", "none")])
def test_an_adapter_crosses_between_quantized_and_plain_bases(tmp_path, trained_on, loaded_on, predict, differ):
    """The LoRA tensors are the same whatever the base's storage: they load unchanged, and
    the outputs differ from those on the training base by the quantization alone."""
    pytest.importorskip("bitsandbytes", reason="model.quantize needs bitsandbytes: pip install 'sam3-lora[quantize]'")
    trained = trained_adapter(load_sam3("sam3-tiny", seed=0, quantize=trained_on, device="cpu").model)
    folder = save_adapter(trained, tmp_path / "adapter", base_source="sam3-tiny")
    loaded = load_adapter(load_sam3("sam3-tiny", seed=0, quantize=loaded_on, device="cpu").model, folder)
    for (name, mine), (_, theirs) in zip(trained.named_parameters(), loaded.named_parameters()):
        if "lora_" in name:
            assert torch.equal(mine, theirs), name
    # The same adapter on the same two bases' storage: the whole difference is quantization.
    same_storage = load_adapter(load_sam3("sam3-tiny", seed=0, quantize=trained_on, device="cpu").model, folder)
    assert differ(predict(same_storage), predict(trained)) == 0
    assert 0 < differ(predict(loaded), predict(trained)) < 0.05
