"""Malformed adapter descriptions end in a one-line ``AdapterError`` or a loaded adapter.

A valid adapter's ``sam3_lora.json`` or PEFT ``adapter_config.json`` is mutated at random (any
value anywhere replaced by random JSON, keys deleted, the text truncated or replaced by random
bytes), then loaded onto a fresh base. Nothing else may escape, and nothing may allocate
without bound (PEFT sizes its LoRA matrices from ``adapter_config.json``'s ranks).
"""

import copy
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam3_lora.errors import AdapterError
from sam3_lora.lora.adapter import load_adapter, save_adapter
from sam3_lora.model.loading import load_sam3
from tests.json_fuzz import json_slots
from tests.lora.test_adapter import trained_adapter

# PEFT warns about the odd settings it ignores; the point here is what it raises.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:peft.*")
MAX_MESSAGE = 400

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 4, 1024, 1025, 10**9])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["", "LORA", "IA3", "all-linear", "q_proj", "sam3", "pissa", "gaussian"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["source", "architecture", "rank", "r", "x"]) | st.text(max_size=4), children, max_size=4),
    max_leaves=8,
)


@st.composite
def mutated(draw, document: dict) -> bytes:
    """``document`` changed in one to three places, as bytes; or its text cut short, or noise."""
    kind = draw(st.sampled_from(["values", "values", "values", "truncate", "bytes"]))
    text = json.dumps(document)
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    root = {"doc": copy.deepcopy(document)}
    for _ in range(draw(st.integers(1, 3))):
        holder, key = draw(st.sampled_from(list(json_slots(root["doc"], root, "doc"))))
        if isinstance(holder, dict) and key != "doc" and draw(st.booleans()):
            del holder[key]
        else:
            holder[key] = draw(json_values)
    return json.dumps(root.get("doc")).encode()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "adapter"
    save_adapter(trained_adapter(load_sam3("sam3-tiny", seed=0).model), folder, base_source="sam3-tiny",
                 prompts=["red circle"])
    return folder


fuzz = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def loads_or_refuses(folder):
    try:
        load_adapter(load_sam3("sam3-tiny", seed=0).model, folder)
    except AdapterError as error:
        assert "\n" not in str(error) and len(str(error)) < MAX_MESSAGE, str(error)[:2000]


def fuzz_file(name):
    @fuzz
    @given(data=st.data())
    def test(tmp_path_factory, adapter, data):
        folder = tmp_path_factory.mktemp("case") / "adapter"
        shutil.copytree(adapter, folder)
        document = json.loads((adapter / name).read_text())
        (folder / name).write_bytes(data.draw(mutated(document)))
        loads_or_refuses(folder)
    return test


test_random_sam3_lora_json = fuzz_file("sam3_lora.json")
test_random_adapter_config_json = fuzz_file("adapter_config.json")


@pytest.mark.parametrize("peft_type", [[], {}, ["LORA"]], ids=["empty list", "object", "list"])
def test_a_peft_type_that_is_no_name_is_one_line(tmp_path, adapter, peft_type):
    """Found by the fuzz above: a list as peft_type was looked up in a dict (TypeError)."""
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": peft_type}))
    with pytest.raises(AdapterError, match="peft_type is"):
        load_adapter(load_sam3("sam3-tiny", seed=0).model, folder)
