import pytest
import torch
from safetensors.torch import save_file

from sam3_lora.errors import AdapterError
from sam3_lora.model.tensor_files import nonfinite, read_tensors


def test_nonfinite_names_the_tensors_holding_nan_or_infinity():
    tensors = {"ok": torch.ones(3), "nan": torch.tensor([1.0, float("nan")]), "empty": torch.empty(0),
               "ints": torch.tensor([1, 2]), "inf": torch.tensor([float("-inf")], dtype=torch.bfloat16),
               "half": torch.full((1000,), 60000.0, dtype=torch.float16)}   # finite, sums past fp16's max
    assert nonfinite(tensors) == ["nan", "inf"]
    assert nonfinite({}) == []


def test_read_tensors_refuses_missing_damaged_and_nonfinite_files(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(AdapterError, match="w.safetensors: missing"):
        read_tensors(path, AdapterError)
    save_file({"a": torch.ones(4), "b": torch.tensor([float("nan")])}, path)
    with pytest.raises(AdapterError, match=r"1 tensor\(s\) hold NaN or infinite values \(first: b\)"):
        read_tensors(path, AdapterError)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(AdapterError, match="not a readable safetensors file, truncated or damaged"):
        read_tensors(path, AdapterError)
    save_file({"a": torch.ones(4)}, path)
    assert torch.equal(read_tensors(path)["a"], torch.ones(4))
