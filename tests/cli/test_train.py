import re

import pytest

from sam3_lora.cli import main
from sam3_lora.model.loading import load_sam3
from sam3_lora.model.quantize import stored_bytes


def info_sizes(capsys, *overrides) -> list[float]:
    assert main(["info", "--config", "demo", "model.source=sam3-tiny", *overrides]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("weights:"))
    return [float(number.replace(",", "")) for number in re.findall(r"([\d,]+\.\d) MiB", line)]


def test_info_shows_the_weights_size_and_the_quantized_size(capsys):
    """The sizes info prints are those the model takes once loaded so."""
    pytest.importorskip("bitsandbytes", reason="model.quantize needs bitsandbytes: pip install 'sam3-lora[quantize]'")
    plain = info_sizes(capsys)
    assert len(plain) == 2 and plain[0] == round(stored_bytes(load_sam3("sam3-tiny").model) / 2**20, 1)
    float32, half, nf4, nf4_half = info_sizes(capsys, "model.quantize=nf4")
    loaded = load_sam3("sam3-tiny", quantize="nf4", device="cpu").model
    assert nf4 == round(stored_bytes(loaded) / 2**20, 1) and nf4 < float32 and nf4_half < half < float32
