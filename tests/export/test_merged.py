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


@pytest.mark.parametrize("method", ["loha", "lokr", "adalora", "vera", "ia3"])
def test_every_method_exports_merged(method, tmp_path, tiny, predict, differ):
    """Every PEFT ``lora.method`` merges into the base (none needs a refusal in PEFT 0.21; the
    bottleneck adapter, ours, is refused: ``test_a_bottleneck_adapter_is_refused_in_one_line``)."""
    from sam3_lora.lora.adapter import save_adapter
    from sam3_lora.model.adapter_parameters import is_adapter_parameter

    rank = {} if method == "ia3" else {"rank": 4}
    model = apply_lora_to_model(tiny.model, LoRAConfig(method=method, target_modules=["q_proj", "v_proj", "fc2"],
                                                       **rank), verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():   # non-zero adapter weights, standing in for a trained adapter
        for name, parameter in model.named_parameters():
            if is_adapter_parameter(name) and parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = save_adapter(model.eval(), tmp_path / "adapter", base_source="sam3-tiny")
    out = export_merged(folder, tmp_path / "merged")
    plain = Sam3Model.from_pretrained(out).eval()
    # the adapter is in (IA3's scales move the random tiny model's outputs least: 3e-5)
    assert differ(predict(plain), predict(load_sam3("sam3-tiny", seed=0).model)) > 1e-5
    assert differ(predict(plain), predict(model)) < 1e-6   # folded in float32


def test_a_bottleneck_adapter_is_refused_in_one_line(tmp_path, tiny, monkeypatch):
    """Its GELU is not linear: no weight holds it. Refused before the base is loaded."""
    from sam3_lora.lora.adapter import save_adapter

    config = LoRAConfig(method="adapter", rank=4, target_modules=["fc2"])
    folder = save_adapter(apply_lora_to_model(tiny.model, config, verbose=False), tmp_path / "adapter",
                          base_source="sam3-tiny")
    monkeypatch.setattr("sam3_lora.model.loading.load_sam3", lambda *a, **k: pytest.fail("the base was loaded"))
    with pytest.raises(AdapterError, match="adapter: a bottleneck adapter is not linear .* use the adapter folder "
                                           "unmerged") as error:
        export_merged(folder, tmp_path / "merged")
    assert "\n" not in str(error.value) and not (tmp_path / "merged").exists()


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


@pytest.mark.parametrize("export", [export_adapter, export_merged])
def test_an_empty_output_path_is_refused_not_read_as_the_current_folder(tmp_path, adapter, export, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ExportError, match="the output folder's path is empty"):
        export(adapter[0], "")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_full_disk_during_a_merged_export_is_one_line_and_leaves_nothing(tmp_path, adapter, monkeypatch):
    """transformers saves through safetensors, whose full-disk error (SafetensorError, not an
    OSError) escaped as a traceback."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    from sam3_lora.errors import Sam3LoraError

    def disk_full(tensors, path, *args, **kwargs):
        raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at '
                              f'path "{path}"')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    folder, _ = adapter
    with pytest.raises(Sam3LoraError, match=r"merged: could not be written \(No space left on device\); "
                                            "nothing half-written was left") as error:
        export_merged(folder, tmp_path / "merged", load_config(TINY_CONFIG))
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


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


# A torchvision stand-in for one subprocess: transformers' Sam3Processor imports torchvision
# (the real one cannot be installed on CPU machines), and building it from a folder needs
# only the names to exist; nothing below calls them.
STAND_IN_TORCHVISION = '''
import importlib.abc, importlib.machinery, sys, types

__version__ = "0.28.0"


class _Stub:
    def __init__(self, *args, **kwargs): pass
    def __call__(self, *args, **kwargs): raise NotImplementedError("a torchvision stand-in")
    def __getattr__(self, name): return _Stub()


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True) if fullname.startswith(
            "torchvision.") else None
    def create_module(self, spec):
        module = _Module(spec.name)
        module.__path__ = []
        return module
    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _Module
'''

LOAD_PROCESSOR = r"""
import json, sys
from transformers import Sam3Processor
processor = Sam3Processor.from_pretrained(sys.argv[1])
ids = processor.tokenizer(["red circle"], padding="max_length", max_length=32)["input_ids"][0]
print(json.dumps({"image": type(processor.image_processor).__name__, "size": dict(processor.image_processor.size),
                  "mean": list(processor.image_processor.image_mean), "target_size": processor.target_size,
                  "ids": ids}))
"""


def test_merged_export_has_what_sam3processor_reads_with_the_umask(tmp_path, adapter):
    import json
    import os
    import subprocess
    import sys

    from sam3_lora.files import current_umask

    folder, _ = adapter
    out = export_merged(folder, tmp_path / "merged", load_config(TINY_CONFIG))
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json"]
    for path in [out, *out.iterdir()]:   # transformers writes model.safetensors 0600 (measured)
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~current_umask(), path.name
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["processor_class"] == "Sam3Processor" and processor["target_size"] == 112
    image = processor["image_processor"]
    assert image["image_processor_type"] == "Sam3ImageProcessor" and image["size"] == {"height": 112, "width": 112}
    assert image["image_mean"] == image["image_std"] == [0.5] * 3 and image["rescale_factor"] == 1 / 255
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == image["size"]
    (tmp_path / "stand_in" / "torchvision").mkdir(parents=True)
    (tmp_path / "stand_in" / "torchvision" / "__init__.py").write_text(STAND_IN_TORCHVISION)
    (tmp_path / "stand_in" / "torchvision-0.28.0.dist-info").mkdir()
    (tmp_path / "stand_in" / "torchvision-0.28.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    done = subprocess.run([sys.executable, "-c", LOAD_PROCESSOR, str(out)], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'stand_in'}{os.pathsep}"
                               f"{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode == 0, done.stderr[-1500:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    expected_ids = load_sam3("sam3-tiny").processor.text(["red circle"])["input_ids"][0].tolist()
    assert loaded == {"image": "Sam3ImageProcessor", "size": {"height": 112, "width": 112}, "mean": [0.5] * 3,
                      "target_size": 112, "ids": expected_ids}


def test_merged_export_of_a_whole_model_folder(tmp_path, predict, differ):
    tiny = load_sam3("sam3-tiny", seed=3)
    tiny.save_pretrained(tmp_path / "full")
    out = export_merged(tmp_path / "full", tmp_path / "merged")
    assert differ(predict(Sam3Model.from_pretrained(out).eval()), predict(tiny.model)) < 1e-6
    assert (out / "processor_config.json").is_file()


def test_merged_export_of_a_quantized_run_dequantizes_first(tmp_path, adapter, predict, differ):
    """The adapter was trained against the nf4 weights: the export adds it to those, in
    float32, and so answers as the quantized model did; onto the float32 base it would not."""
    pytest.importorskip("bitsandbytes", reason="model.quantize needs bitsandbytes: pip install 'sam3-lora[quantize]'")
    folder, on_plain = adapter
    config = load_config(TINY_CONFIG, ["model.quantize=nf4"])
    on_nf4 = load_adapter(load_sam3("sam3-tiny", seed=0, quantize="nf4", device="cpu").model, folder)
    out = export_merged(folder, tmp_path / "merged", config)
    merged = Sam3Model.from_pretrained(out).eval()
    assert {type(m).__name__ for m in merged.modules() if isinstance(m, torch.nn.Linear)} == {"Linear"}
    assert differ(predict(merged), predict(on_nf4)) < 1e-5
    assert differ(predict(merged), predict(on_plain)) > 1e-3
