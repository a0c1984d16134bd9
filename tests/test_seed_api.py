"""The original tool's Python API, as its users wrote it: the five Python examples of its
README (``seed_snippets/``, copied verbatim) run here against sam3-lora.

What is changed, and only that: the imports name ``sam3_lora`` instead of the original
modules, the weights path names our adapter folder (the original pickled ``.pt`` files,
which sam3-lora refuses to read), and the config file is ours with the tiny random SAM3 as
``model.source`` (no hub here). The snippets assume ``torch`` and a ``YourModel`` exist.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sam3_lora.data.synth import synthesize

SNIPPETS = Path(__file__).parent / "seed_snippets"
RENAMES = {
    "from infer_sam import": "from sam3_lora import",
    "from lora_layers import": "from sam3_lora import",
    "from train_sam3_lora_native import SAM3TrainerNative":
        "from sam3_lora import SAM3LoRATrainer as SAM3TrainerNative",
    "outputs/sam3_lora_full/best_lora_weights.pt": "outputs/sam3_lora_full/best",
}
CONFIG = """\
model:
  source: sam3-tiny
lora:
  rank: 4
  target_modules: [q_proj, v_proj]
  apply_to_vision_encoder: true
  apply_to_mask_decoder: true
data:
  root: data
training:
  batch_size: 2
  max_steps: 2
  report_to: []
output:
  dir: outputs/sam3_lora_full
"""


class YourModel(nn.Module):
    """A user's own model with attention projections, for the "LoRA on any model" example."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)


def run_snippet(name: str, namespace: dict) -> dict:
    code = (SNIPPETS / f"{name}.py.txt").read_text()
    for old, new in RENAMES.items():
        code = code.replace(old, new)
    exec(compile(code, f"seed_snippets/{name}", "exec"), namespace)   # noqa: S102 - our own test files
    return namespace


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "full_lora_config.yaml").write_text(CONFIG)
    synthesize(tmp_path / "data", images_per_split={"train": 4, "valid": 2}, image_size=112, seed=0)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    picture.save(tmp_path / "image.jpg")
    (tmp_path / "test_images").mkdir()
    for index in range(2):
        picture.save(tmp_path / "test_images" / f"photo{index}.jpg")
    return tmp_path


def test_training_then_inference_as_the_original_readme_shows(workdir, capsys):
    run_snippet("programmatic_training", {})
    assert (workdir / "outputs" / "sam3_lora_full" / "best" / "adapter_model.safetensors").is_file()
    found = run_snippet("inference", {})["predictions"]
    assert [p["prompt"] for p in found] == ["crack", "defect", "damage"]
    assert (workdir / "output.png").is_file()
    run_snippet("batch_inference", {})
    assert sorted(p.name for p in (workdir / "predictions").iterdir()) == [
        "photo0_multi.png", "photo0_pred.png", "photo1_multi.png", "photo1_pred.png"]
    printed = capsys.readouterr().out
    assert "Processed photo1.jpg" in printed and "damage:" in printed


def test_lora_on_any_model_then_save_and_load(workdir, capsys):
    namespace = run_snippet("lora_on_any_model", {"YourModel": YourModel, "torch": torch})
    # LoRA: 3 layers x rank 8 x (8 + 8) = 384; the model: 3 x 72 + 18 = 234 frozen weights.
    assert "Trainable: 384 / 618" in capsys.readouterr().out
    run_snippet("save_and_load", namespace)
    assert (workdir / "my_lora_weights.pt" / "adapter_model.safetensors").is_file()
