"""The precision resolver: model.dtype x training.mixed_precision x device -> one choice.

CUDA is stubbed: the resolver asks torch.cuda.is_bf16_supported, which these tests answer.
"""

import pytest
import torch

from sam3_lora.config import LoRAConfig
from sam3_lora.errors import ConfigError
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.forward import encode_text, forward_queries
from sam3_lora.model.loading import load_sam3
from sam3_lora.model.precision import (
    Precision,
    autocast_like,
    enable_tf32,
    resolve_precision,
    weights_dtype,
)

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def ampere(monkeypatch):
    """A CUDA device with native bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


@pytest.fixture
def turing(monkeypatch):
    """A CUDA device without native bf16 (it would only emulate it)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)


def chosen(precision: Precision) -> tuple[torch.dtype, str]:
    return precision.dtype, precision.autocast


# ---- auto --------------------------------------------------------------------------------


def test_auto_on_cpu_is_float32_without_autocast():
    assert chosen(resolve_precision("auto", "auto", CPU)) == (torch.float32, "no")
    assert chosen(resolve_precision("auto", None, CPU)) == (torch.float32, "no")   # inference
    assert not resolve_precision("auto", "auto", CPU).tf32


def test_auto_on_cuda_with_bf16_is_bf16(ampere):
    assert chosen(resolve_precision("auto", "auto", CUDA)) == (torch.bfloat16, "bf16")
    assert chosen(resolve_precision("auto", None, CUDA)) == (torch.bfloat16, "bf16")


def test_auto_on_cuda_without_bf16_is_fp16(turing):
    assert chosen(resolve_precision("auto", "auto", CUDA)) == (torch.float16, "fp16")
    assert chosen(resolve_precision("auto", None, CUDA)) == (torch.float16, "fp16")


def test_the_default_device_is_asked_when_none_is_given(monkeypatch, ampere):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision().device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision().device == "cpu"


# ---- explicit values and how the keys follow each other -------------------------------------


@pytest.mark.parametrize("dtype, mixed, expected", [
    ("bfloat16", "auto", (torch.bfloat16, "bf16")),   # auto autocast follows a half base
    ("float32", "auto", (torch.float32, "no")),
    ("float32", "bf16", (torch.float32, "bf16")),     # bf16 math over float32 weights
    ("auto", "bf16", (torch.float32, "bf16")),        # the base stays float32 on CPU
    ("bfloat16", "bf16", (torch.bfloat16, "bf16")),
])
def test_explicit_choices_on_cpu(dtype, mixed, expected):
    assert chosen(resolve_precision(dtype, mixed, CPU)) == expected


@pytest.mark.parametrize("dtype, mixed, expected", [
    ("auto", "no", (torch.float32, "no")),            # float32 math asked for: float32 weights
    ("auto", "fp16", (torch.float16, "fp16")),
    ("float32", "auto", (torch.float32, "bf16")),     # float32 master weights, bf16 math
    ("float16", "auto", (torch.float16, "fp16")),
    ("float32", "no", (torch.float32, "no")),
])
def test_explicit_choices_on_cuda(ampere, dtype, mixed, expected):
    assert chosen(resolve_precision(dtype, mixed, CUDA)) == expected


@pytest.mark.parametrize("dtype, mixed, message", [
    ("bfloat16", "no", "model.dtype=bfloat16 with training.mixed_precision=no"),
    ("float16", "bf16", "model.dtype=float16 with training.mixed_precision=bf16"),
    ("bfloat16", "fp16", "model.dtype=bfloat16 with training.mixed_precision=fp16"),
])
def test_contradictions_name_both_keys(ampere, dtype, mixed, message):
    with pytest.raises(ConfigError, match=message):
        resolve_precision(dtype, mixed, CUDA)


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="model.dtype=float16 needs a CUDA GPU"):
        resolve_precision("float16", None, CPU)
    with pytest.raises(ConfigError, match="training.mixed_precision=fp16 needs a CUDA GPU"):
        resolve_precision("auto", "fp16", CPU)


def test_full_training_keeps_float32_master_weights(ampere):
    assert chosen(resolve_precision("auto", "auto", CUDA, full_training=True)) == (torch.float32, "bf16")
    assert chosen(resolve_precision("auto", "auto", CPU, full_training=True)) == (torch.float32, "no")
    with pytest.raises(ConfigError, match="model.dtype=bfloat16 with training.method=full"):
        resolve_precision("bfloat16", "auto", CPU, full_training=True)


def test_the_choice_is_recorded_and_described(ampere):
    precision = resolve_precision("auto", "auto", CUDA)
    assert precision.record() == {"device": "cuda", "base_dtype": "bfloat16", "autocast": "bf16",
                                  "trained_dtype": "float32", "tf32": False}
    assert precision.describe() == "cuda: base weights bfloat16, autocast bf16, LoRA float32"
    assert "TF32" in resolve_precision("float32", "no", CUDA).describe()
    assert resolve_precision("auto", "auto", CUDA, full_training=True).describe() == (
        "cuda: every weight trained in float32, autocast bf16")


# ---- TF32 --------------------------------------------------------------------------------


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_tf32_only_for_float32_math_on_cuda(ampere, matmul_precision):
    for precision in (resolve_precision("auto", "auto", CPU), resolve_precision("auto", "auto", CUDA),
                      resolve_precision("float32", "bf16", CUDA)):
        assert not precision.tf32
        enable_tf32(precision)
        assert torch.get_float32_matmul_precision() == "highest"
    float32_math = resolve_precision("float32", "no", CUDA)
    assert float32_math.tf32 and resolve_precision("float32", None, CUDA).tf32
    enable_tf32(float32_math)
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32


# ---- a half-precision base runs under its own autocast -------------------------------------


def test_a_bfloat16_base_with_float32_lora_runs_forward_and_backward(tiny, tiny_inputs):
    """bf16 base + fp32 LoRA: forward (text, image, boxes) and backward work without any
    caller-side autocast; gradients reach LoRA only, in float32."""
    model = apply_lora_to_model(tiny.model.to(torch.bfloat16), LoRAConfig(
        rank=4, target_modules=["all"], apply_to_mask_decoder=True, apply_to_geometry_encoder=True), verbose=False)
    assert weights_dtype(model) == torch.bfloat16
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}   # PEFT's autocast_adapter_dtype
    index = torch.tensor([0, 1])
    boxes = {"input_boxes": torch.tensor([[[0.5, 0.5, 0.3, 0.3]]] * 2),
             "input_boxes_labels": torch.ones(2, 1, dtype=torch.long)}
    out = forward_queries(model.train(), index, pixel_values=tiny_inputs["pixel_values"],
                          input_ids=tiny_inputs["input_ids"], attention_mask=tiny_inputs["attention_mask"],
                          aux_outputs=True, **boxes)
    assert out["pred_masks"].dtype == torch.bfloat16
    (out["pred_logits"].float().sum() + out["pred_masks"].float().mean()).backward()
    grads = [p.grad for p in lora.values() if p.grad is not None]
    assert grads and {g.dtype for g in grads} == {torch.float32}
    assert all(p.grad is None for name, p in model.named_parameters() if "lora_" not in name)
    assert encode_text(model, tiny_inputs["input_ids"], tiny_inputs["attention_mask"]).dtype == torch.bfloat16


def test_autocast_like_leaves_float32_models_and_outer_autocasts_alone(tiny):
    with autocast_like(tiny.model):
        assert not torch.is_autocast_enabled("cpu")
    half = load_sam3("sam3-tiny", dtype=torch.bfloat16).model
    with autocast_like(half):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True), autocast_like(half):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bfloat16_outputs_agree_with_float32(tiny_inputs):
    """The same weights, rounded to bf16: close answers (a sanity bound, not a metric)."""
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_sam3("sam3-tiny", dtype=dtype).model
        with torch.no_grad():
            outputs[dtype] = forward_queries(model, torch.tensor([0, 1]), pixel_values=tiny_inputs["pixel_values"],
                                             input_ids=tiny_inputs["input_ids"],
                                             attention_mask=tiny_inputs["attention_mask"])
    for key in ("pred_logits", "pred_boxes", "presence_logits"):
        reference = outputs[torch.float32][key]
        assert (outputs[torch.bfloat16][key].float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_bfloat16_keeps_the_bundled_base_held_out_map(tmp_path):
    """The bundled base (read by name: whatever weights ship) on the first 48 images of its
    held-out split (base concepts, seed 0), every concept prompted on every image: bf16 mAP
    within 0.01 of float32. (bench/bench_precision.py scores all 150; BENCHMARKS.md has it.)"""
    from sam3_lora.config import load_config
    from sam3_lora.data.coco.split import load_coco_split
    from sam3_lora.data.synth import synthesize
    from sam3_lora.evaluation.runner import SplitRunner, score
    from sam3_lora.lora.weights import load_finetuned
    from sam3_lora.recipes.demo import BASE_CONCEPTS, BASE_MODEL, SHAPE_STYLE

    synthesize(tmp_path, **BASE_CONCEPTS, **SHAPE_STYLE, seed=0, images_per_split={"test": 48})
    found = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config("demo", [f"model.source={BASE_MODEL}", f"data.root={tmp_path}", f"model.dtype={dtype}",
                                      "training.batch_size=16"])
        model, processor, _ = load_finetuned(config, no_lora=True)
        assert weights_dtype(model) == getattr(torch, dtype)
        runner = SplitRunner(model, processor, load_coco_split(tmp_path / "test", name="test"), config)
        found[dtype] = score(runner.ground_truth(), runner.predict(with_loss=False).results, 0.5)[0]["mAP"]
    assert found["float32"] > 0.05   # the base finds its own concepts: a comparison worth making
    assert abs(found["bfloat16"] - found["float32"]) < 0.01, found
