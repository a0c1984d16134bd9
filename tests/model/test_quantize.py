import sys

import pytest
import torch
from torch import nn

from sam3_lora.config import load_config
from sam3_lora.errors import ConfigError, ModelLoadError
from sam3_lora.model.loading import load_sam3
from sam3_lora.model.quantize import (
    check_runs,
    dequantize_linears,
    estimated_bytes,
    quantization,
    stored_bytes,
)
from tests.conftest import TINY_CONFIG

NEEDS_BNB = "model.quantize needs bitsandbytes: pip install 'sam3-lora[quantize]'"


@pytest.fixture
def bnb():
    return pytest.importorskip("bitsandbytes", reason=NEEDS_BNB)


def linear_kinds(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if isinstance(m, nn.Linear)}


# Largest change of a prediction on the random tiny model (pred_logits up to 0.02, boxes up
# to 0.76), measured on sam3-tiny seed 0: nf4 0.0067, fp4 0.0085, int8 0.0003 (in pred_logits).
TOLERANCE = {"nf4": 0.05, "fp4": 0.05, "int8": 0.005}


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_quantized_loading_shrinks_the_linear_layers_and_stays_close(bnb, method, predict, differ):
    plain = load_sam3("sam3-tiny", seed=0)
    expected_bytes = estimated_bytes(plain.model, method, 4)
    loaded = load_sam3("sam3-tiny", seed=0, quantize=method, device="cpu")
    kind = "Linear8bitLt" if method == "int8" else "Linear4bit"
    assert linear_kinds(loaded.model) == {kind} and quantization(loaded.model) == method
    assert stored_bytes(loaded.model) == expected_bytes < stored_bytes(plain.model)
    change = differ(predict(loaded.model), predict(plain.model))
    assert 0 < change < TOLERANCE[method]


def test_4bit_layers_keep_their_layout_after_an_inference_forward(bnb, predict):
    """bitsandbytes repacks a 4-bit layer for its AVX512-BF16 CPU kernel at the first no-grad
    forward, after which training fails; the layers here never are (where the CPU lacks the
    feature bitsandbytes would not repack them anyway)."""
    loaded = load_sam3("sam3-tiny", seed=0, quantize="nf4", device="cpu")
    predict(loaded.model.eval())
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_the_estimate_of_a_plain_model_is_its_size():
    plain = load_sam3("sam3-tiny", seed=0)
    assert estimated_bytes(plain.model, "none", 4) == stored_bytes(plain.model)
    assert estimated_bytes(plain.model, "none", 2) < stored_bytes(plain.model)


def test_dequantizing_gives_plain_linears_computing_the_same(bnb, predict, differ):
    loaded = load_sam3("sam3-tiny", seed=0, quantize="nf4", device="cpu")
    before = predict(loaded.model)
    assert dequantize_linears(loaded.model) > 0
    assert linear_kinds(loaded.model) == {"Linear"} and quantization(loaded.model) == "none"
    assert differ(predict(loaded.model), before) < 1e-5


def test_lora_trains_on_a_quantized_base(bnb, tiny_inputs):
    """PEFT wraps each bitsandbytes layer with its own LoRA layer; gradients reach LoRA only."""
    from sam3_lora.lora.apply import apply_lora_to_model

    loaded = load_sam3("sam3-tiny", seed=0, quantize="nf4", device="cpu")
    model = apply_lora_to_model(loaded.model, load_config(TINY_CONFIG).lora, verbose=False)
    wrapped = {type(m).__module__ + "." + type(m).__name__ for m in model.modules() if hasattr(m, "lora_A")}
    assert wrapped == {"peft.tuners.lora.bnb.Linear4bit"}
    outputs = model(**tiny_inputs)
    (outputs.pred_logits.sum() + outputs.pred_masks.mean()).backward()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in name for name in with_grad)


def test_missing_bitsandbytes_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # import fails as if not installed
    with pytest.raises(ModelLoadError, match=r"model.quantize=nf4: bitsandbytes is not installed; "
                                             r"pip install 'sam3-lora\[quantize\]'.*or set model.quantize=none"):
        load_sam3("sam3-tiny", quantize="nf4", device="cpu")


def test_a_device_bitsandbytes_cannot_run_on_is_one_line(bnb):
    with pytest.raises(ModelLoadError, match=r"model.quantize=int8: bitsandbytes .* cannot run on meta "
                                             r"\(.*\); set model.quantize=none") as error:
        check_runs("int8", torch.float32, "meta")
    assert "\n" not in str(error.value)


def test_full_training_of_a_quantized_base_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  quantize: nf4\ntraining:\n  method: full\n")
    with pytest.raises(ConfigError, match=rf"{path}: model.quantize=nf4 cannot be trained with "
                                          r"training.method=full .*set model.quantize=none"):
        load_config(path)
    assert load_config(path, ["model.quantize=none"]).training.method == "full"
