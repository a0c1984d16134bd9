import pytest

from sam3_lora.config import METHODS, LoRAConfig
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.adapter_parameters import (
    adapter_prefixes,
    is_adapter_parameter,
    is_derived,
    split_adapter_name,
)
from sam3_lora.model.loading import load_sam3


def test_prefixes_are_peft_s_own_for_every_method():
    assert set(adapter_prefixes()) == {"lora_", "hada_", "lokr_", "vera_lambda_", "ia3_"}


@pytest.mark.parametrize("method", METHODS)
def test_exactly_the_adapter_s_parameters_are_adapter_parameters(method):
    model = load_sam3("sam3-tiny", seed=0).model
    base_names = {f"base_model.model.{name}" for name, _ in model.named_parameters()}
    rank = {} if method == "ia3" else {"rank": 4}
    adapted = apply_lora_to_model(model, LoRAConfig(method=method, target_modules=["q_proj", "fc2"], **rank),
                                  verbose=False)
    for name, parameter in adapted.named_parameters():
        # PEFT moves a wrapped layer's own weight to "<layer>.base_layer.weight"
        own = name.replace(".base_layer.", ".") in base_names
        assert is_adapter_parameter(name) != own, name
        assert parameter.requires_grad == (is_adapter_parameter(name) and not is_derived(name)), name


@pytest.mark.parametrize(("name", "split"), [
    ("vision_encoder.layers.0.attn.q_proj.lora_A.default.weight", ("vision_encoder.layers.0.attn.q_proj",
                                                                    "lora_A.default.weight")),
    ("x.fc2.ia3_l.default", ("x.fc2", "ia3_l.default")),
    ("x.q_proj.ranknum.default", ("x.q_proj", "ranknum.default")),
    ("x.q_proj.weight", None),
])
def test_split_adapter_name(name, split):
    assert split_adapter_name(name) == split
