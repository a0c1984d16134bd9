import pytest
import torch
from transformers import Sam3Model

from sam3_lora.config import LoRAConfig, load_config
from sam3_lora.errors import AdapterError
from sam3_lora.export.merged import ExportError, export_adapter, export_merged
from sam3_lora.lora.adapter import load_adapter, read_metadata
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.loading import load_sam3
from tests.conftest import TINY_CONFIG


@pytest.fixture
def adapter(tmp_path, tiny):
    """A saved adapter with random (non-zero) LoRA B, on sam3-tiny seed 0."""
    from sam3_lora.lora.adapter import save_adapter

    model = apply_lora_to_model(tiny.model, LoRAConfig(rank=4, target_modules=["all"], apply_to_mask_decoder=True),
                                verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return save_adapter(model.eval(), tmp_path / "adapter", base_source="sam3-tiny"), model


def test_merged_export_loads_with_plain_transformers(tmp_path, adapter, predict, differ):
    folder, adapted = adapter
    out = export_merged(folder, tmp_path / "merged", load_config(TINY_CONFIG))
    plain = Sam3Model.from_pretrained(out).eval()            # no sam3_lora code involved
    assert differ(predict(plain), predict(adapted)) < 1e-5   # W + BA folded in float32
    assert (out / "tokenizer.json").is_file()
    assert not any(p.name.startswith("adapter_") for p in out.iterdir())


def test_merged_export_takes_its_base_from_the_adapter(tmp_path, adapter, predict, differ):
    folder, adapted = adapter
    out = export_merged(folder, tmp_path / "merged")          # no config: sam3-tiny from sam3_lora.json
    assert differ(predict(Sam3Model.from_pretrained(out).eval()), predict(adapted)) < 1e-5


def test_adapter_only_export_is_clean_and_loads(tmp_path, adapter, predict, differ):
    folder, adapted = adapter
    (folder / "optimizer.safetensors").write_bytes(b"training state, not for sharing")
    out = export_adapter(folder, tmp_path / "shared")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors", "sam3_lora.json"]
    assert read_metadata(out)["base_model"]["source"] == "sam3-tiny"
    assert differ(predict(load_adapter(load_sam3("sam3-tiny").model, out).eval()), predict(adapted)) == 0.0


def a_file(root):
    (root / "x").write_text("x")
    return root / "x"


def a_full_folder(root):
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("mine")
    return root / "full"


@pytest.mark.parametrize("make, message", [(a_file, "is a file"), (a_full_folder, "not empty")])
def test_export_never_overwrites(tmp_path, adapter, make, message):
    folder, _ = adapter
    target = make(tmp_path)
    with pytest.raises(ExportError, match=message):
        export_adapter(folder, target)
    assert (target.read_text() if target.is_file() else (target / "keep.txt").read_text()) in ("x", "mine")


def test_export_of_something_that_is_not_an_adapter(tmp_path):
    with pytest.raises(AdapterError, match="not an adapter folder"):
        export_merged(tmp_path, tmp_path / "out")


def test_merged_export_is_written_in_the_dtype_asked_for(tmp_path, adapter, capsys):
    """Merged in float32, cast once: bf16 weights equal the float32 export's, rounded; the CLI's
    --dtype reaches it; float32 stays the default."""
    from safetensors.torch import load_file

    from sam3_lora.cli import main

    folder, _ = adapter
    full = export_merged(folder, tmp_path / "fp32", load_config(TINY_CONFIG))
    assert main(["export", "--config", str(TINY_CONFIG), "--weights", str(folder), "--merged", str(tmp_path / "bf16"),
                 "--dtype", "bfloat16"]) == 0
    assert "merged model (bfloat16)" in capsys.readouterr().out
    half, reference = (load_file(path / "model.safetensors") for path in (tmp_path / "bf16", full))
    assert {t.dtype for t in reference.values() if t.is_floating_point()} == {torch.float32}
    assert {t.dtype for t in half.values() if t.is_floating_point()} == {torch.bfloat16}
    assert all(torch.equal(half[k], v.to(torch.bfloat16)) for k, v in reference.items() if v.is_floating_point())
    assert Sam3Model.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    with pytest.raises(ExportError, match="dtype 'int8': choose one of float32, bfloat16, float16"):
        export_merged(folder, tmp_path / "int8", dtype="int8")
