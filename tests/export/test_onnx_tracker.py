"""ONNX export of SAM3's tracker (``model.task: interactive``) and its onnxruntime engine
against PyTorch (``serve.tracker.segment_object`` and ``model.tracker.ObjectPredictor``).

Two exports serve the module: the random ``sam3-tiny`` tracker exported in memory, and the
bundled base's tracker with a random LoRA on its mask decoder, saved as an adapter and
exported through the command line as a user would (merge included).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'sam3-lora[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install 'sam3-lora[onnx]'")

from sam3_lora.cli import main
from sam3_lora.config import LoRAConfig
from sam3_lora.export.onnx_tracker import (
    TrackerMaskDecoder,
    example_inputs,
    export_tracker_onnx,
    tracker_patches,
)
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.tracker import ObjectPredictor, load_tracker
from sam3_lora.serve.onnx_engine import OnnxEngineError, SAM3OnnxInference
from sam3_lora.serve.onnx_tracker import SAM3OnnxTracker, choose_mask
from sam3_lora.serve.prompts import PromptError
from sam3_lora.serve.tracker import segment_object

BASE = "sam3-tiny-shapes"
TRACKER = ["model.task=interactive", f"model.source={BASE}"]
HEIGHT, WIDTH = 90, 130
MASK_PIXELS = 20
"""The final masks may differ on this many pixels at most (logits within ~1e-5 of 0 at the
object's boundary can fall either side); measured: 0 on these cases."""


def picture(seed: int = 0) -> Image.Image:
    """A random grey-ish RGB image, not square (the prompt scaling differs per axis), with a
    red object inside the box of ``PROMPTS`` under its positive clicks: the bundled tracker is
    trained, and on noise alone its answer to a click can be nothing at all."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[25:75, 15:85] = (220, 40, 40)
    return Image.fromarray(pixels)


def blob(seed: int) -> np.ndarray:
    """An (H, W) bool mask prompt: an ellipse."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    cx, cy = rng.uniform(30, 100), rng.uniform(20, 70)
    return ((x - cx) / 25) ** 2 + ((y - cy) / 15) ** 2 < 1


PROMPTS = {
    "one click (multimask)": {"points": [[40, 30]]},
    "two clicks, one negative": {"points": [[40, 30], [100, 70]], "labels": [1, 0]},
    "box": {"box": [10, 20, 90, 80]},
    "click and box": {"points": [[50, 50]], "box": [10, 20, 90, 80]},
    "mask": {"mask": blob(1)},
    "click and mask": {"points": [[20, 60]], "labels": [1], "mask": blob(2)},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the random sam3-tiny tracker, its export)."""
    torch.set_num_threads(1)
    loaded = load_tracker("sam3-tiny")
    out = export_tracker_onnx(loaded.model, tmp_path_factory.mktemp("tiny") / "out")
    return loaded, out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(the bundled base's tracker with a random LoRA merged, the export of its adapter
    through ``sam3-lora export --onnx ... model.task=interactive``)."""
    torch.set_num_threads(1)
    loaded = load_tracker(BASE)
    model = apply_lora_to_model(loaded.model, LoRAConfig(rank=4, alpha=8, target_modules=["all"],
                                                         apply_to_mask_decoder=True), verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    root = tmp_path_factory.mktemp("shapes")
    adapter = save_adapter(model.eval(), root / "adapter", base_source=BASE)
    assert main(["export", "--weights", str(adapter), "--onnx", str(root / "out"), *TRACKER]) == 0
    loaded.model = model.merge_and_unload().eval()
    return loaded, root / "out"


@pytest.fixture(params=["tiny", "shapes"])
def pair(request):
    """(PyTorch's LoadedTracker, the ONNX engine) for each export."""
    loaded, out = request.getfixturevalue(request.param)
    return loaded, SAM3OnnxTracker(out, threads=1)


# ---- the engine against PyTorch -------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROMPTS))
def test_segment_matches_pytorch(pair, name):
    loaded, engine = pair
    expected = segment_object(loaded.model, loaded.processor, picture(), **PROMPTS[name])
    got = engine.segment(picture(), **PROMPTS[name])
    assert abs(got["score"] - expected["score"]) < 1e-4
    assert abs(got["object_score"] - expected["object_score"]) < 1e-4
    assert got["mask"].shape == (HEIGHT, WIDTH) and got["mask"].dtype == bool
    assert (got["mask"] != expected["mask"]).sum() <= MASK_PIXELS
    assert 0 < expected["mask"].sum() < HEIGHT * WIDTH or name == "box", "a trivial mask: the case lost its point"


def test_clicks_with_the_previous_mask_match_pytorch(pair):
    """SAM's interactive loop: encode once, then every click with the previous answer's
    logits fed back (``ObjectPredictor``); logits, scores and masks compared per click."""
    loaded, engine = pair
    image = picture(3)
    torch_predictor = ObjectPredictor(loaded.model, loaded.processor.images([image]), (HEIGHT, WIDTH))
    onnx_predictor = engine.predictor(image)
    clicks, labels = [[40, 30]], [1]
    for step in range(4):
        expected, got = torch_predictor(clicks, labels).numpy(), onnx_predictor(clicks, labels)
        reference = torch_predictor.previous[0, 0].numpy()
        assert np.abs(onnx_predictor.previous[0, 0] - reference).max() < 1e-3 * max(np.abs(reference).max(), 1)
        assert (got != expected).sum() <= MASK_PIXELS, step
        clicks.append([10 + 25 * step, 80 - 15 * step])
        labels.append(step % 2)
    assert set(onnx_predictor.last) == {"mask", "score", "object_score"}
    onnx_predictor.reset()
    assert onnx_predictor.previous is None


def test_decoder_graph_outputs_match_pytorch(tiny):
    """The mask decoder's raw outputs (all T masks, their IoU scores, the object score
    logit) for a prompt of clicks, a box and a mask, against the patched module."""
    loaded, out = tiny
    engine = SAM3OnnxTracker(out, threads=1)
    encoded = engine.encode(picture(4))
    _, coords, labels, mask, has_mask = example_inputs(loaded.model, points=5, seed=4)
    got = engine.decode(encoded, coords.numpy(), labels.numpy(), mask.numpy())
    with tracker_patches(loaded.model), torch.no_grad():
        expected = TrackerMaskDecoder(loaded.model)(*(torch.from_numpy(a) for a in encoded.feeds().values()),
                                                     coords, labels, mask, has_mask)
    for array, reference in zip(got.values(), expected, strict=True):
        reference = reference[0].numpy()
        assert array.shape == reference.shape
        assert np.abs(array - reference).max() < 1e-4 * max(np.abs(reference).max(), 1)
    assert got["masks"].shape[0] == 4, "the graph returns every mask token: the engine chooses"


def test_choose_mask_is_transformers_stability_rule(tiny):
    """Single-mask answers: mask 0 unless unstable, then the best of 1..3, as transformers'
    ``_dynamic_multimask_via_stability``; multimask: the best of 1..3."""
    loaded, out = tiny
    decoder = loaded.model.mask_decoder
    tracker = SAM3OnnxTracker(out).tracker
    generator = torch.Generator().manual_seed(0)
    stable_seen = set()
    for trial in range(40):
        masks = torch.randn(1, 1, 4, 8, 8, generator=generator) * (0.02 if trial % 2 else 3.0)
        scores = torch.rand(1, 1, 4, generator=generator)
        chosen, _ = decoder._dynamic_multimask_via_stability(masks, scores)
        index = choose_mask(masks[0, 0].numpy(), scores[0, 0].numpy(), False, tracker)
        assert torch.equal(masks[0, 0, index], chosen[0, 0, 0])
        stable_seen.add(index == 0)
        assert choose_mask(masks[0, 0].numpy(), scores[0, 0].numpy(), True, tracker) == 1 + int(scores[0, 0, 1:].argmax())
    assert stable_seen == {True, False}, "both branches of the rule must be exercised"


# ---- the export folder, the command line, INT8 -------------------------------------------------------

def test_export_folder_states_the_tracker(shapes):
    _, out = shapes
    metadata = json.loads((out / "sam3_onnx.json").read_text())
    assert {p.name for p in out.iterdir()} == {"image_encoder.onnx", "mask_decoder.onnx", "sam3_onnx.json"}
    assert metadata["task"] == "interactive" and "text" not in metadata
    assert metadata["tracker"]["mask_size"] == 64 and metadata["tracker"]["mask_tokens"] == 4   # 224 px: 16 x 16 tokens
    assert list(metadata["graphs"]) == ["image_encoder", "mask_decoder"]


def test_predict_onnx_points_writes_pytorchs_mask(shapes, tmp_path):
    loaded, out = shapes
    image = tmp_path / "img.png"
    picture(5).save(image)
    assert main(["predict", "--onnx", str(out), "--image", str(image), "--points", "40,30", "100,70,0",
                 "--output", str(tmp_path / "p.png")]) == 0
    entries = json.loads((tmp_path / "p.json").read_text())
    expected = segment_object(loaded.model, loaded.processor, picture(5), [[40, 30], [100, 70]], [1, 0])
    assert len(entries) == 1 and entries[0]["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert (tmp_path / "p.png").is_file()


def test_int8_copy_of_a_tracker_export_runs(shapes, tmp_path):
    """``--quantize int8`` on a tracker export: the image encoder in INT8, the decoder float32."""
    _, out = shapes
    assert main(["export", "--weights", str(out), "--onnx", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    metadata = json.loads((tmp_path / "int8" / "sam3_onnx.json").read_text())
    assert metadata["quantization"]["graphs"] == ["image_encoder"]
    assert metadata["graphs"]["image_encoder"]["file"] == "image_encoder_int8.onnx"
    got = SAM3OnnxTracker(tmp_path / "int8").segment(picture(), **PROMPTS["box"])
    assert got["mask"].shape == (HEIGHT, WIDTH) and 0 <= got["object_score"] <= 1


NO_TORCH = r"""
import json, sys
for name in ("torch", "transformers", "peft", "torchvision"):
    sys.modules[name] = None               # "import torch" now raises ImportError
from sam3_lora.serve.onnx_tracker import SAM3OnnxTracker
engine = SAM3OnnxTracker(sys.argv[1], threads=1)
answer = engine.segment(sys.argv[2], [[40, 30]], box=[10, 20, 90, 80])
predictor = engine.predictor(sys.argv[2])
predictor([[40, 30]]); predictor([[40, 30], [100, 70]], [1, 0])
from sam3_lora.cli import main
assert main(["predict", "--onnx", sys.argv[1], "--image", sys.argv[2], "--points", "40,30",
             "--output", sys.argv[3]]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "torchvision")
               and sys.modules[m] is not None)
print(json.dumps({"pixels": int(answer["mask"].sum()), "heavy": heavy}))
"""


def test_tracker_engine_and_predict_run_without_torch(tiny, tmp_path):
    _, out = tiny
    image = tmp_path / "img.png"
    picture().save(image)
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(out), str(image), str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["heavy"] == []
    assert (tmp_path / "o.png").is_file()


# ---- wrong folder, wrong prompt: one line -------------------------------------------------------------

def test_each_engine_refuses_the_other_tasks_export(tiny, tmp_path, capsys):
    _, out = tiny
    with pytest.raises(OnnxEngineError, match="model.task=interactive, not concept; run it with SAM3OnnxTracker"):
        SAM3OnnxInference(out)
    concept = tmp_path / "concept"
    concept.mkdir()
    metadata = json.loads((out / "sam3_onnx.json").read_text())
    (concept / "sam3_onnx.json").write_text(json.dumps({**metadata, "task": "concept"}))
    with pytest.raises(OnnxEngineError, match=r"graphs: \['image_encoder', 'mask_decoder'\], but task concept exports have"):
        SAM3OnnxTracker(concept)
    image = tmp_path / "img.png"
    picture().save(image)
    assert main(["predict", "--onnx", str(out), "--image", str(image), "--prompt", "circle"]) == 2
    err = capsys.readouterr().err
    assert "the tracker (model.task=interactive) takes --points" in err and err.count("\n") == 1


@pytest.mark.parametrize(("prompt", "message"), [
    ({"points": [[500, 10]]}, "every point must lie inside the 130x90 image"),
    ({"points": [[5, 10]], "labels": [2]}, r"each 1 \(object\) or 0 \(not it\)"),
    ({"box": [[0, 0, 5, 5], [1, 1, 9, 9]]}, "give one box"),
    ({}, "give points, a box or a mask"),
    ({"mask": np.zeros((10, 10), bool)}, r"mask: shape \(10, 10\) for a 130x90 image"),
])
def test_bad_prompts_get_pytorchs_one_line(tiny, prompt, message):
    loaded, out = tiny
    engine = SAM3OnnxTracker(out)
    for segment in (lambda: engine.segment(picture(), **prompt),
                    lambda: segment_object(loaded.model, loaded.processor, picture(), **prompt)):
        with pytest.raises(PromptError, match=message):
            segment()


def test_damaged_tracker_metadata_is_one_line(tiny, tmp_path):
    _, out = tiny
    for name, change in {"no tracker": lambda m: m.pop("tracker"),
                         "mask size": lambda m: m["tracker"].update(mask_size=64)}.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        for path in out.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        metadata = json.loads((out / "sam3_onnx.json").read_text())
        change(metadata)
        (folder / "sam3_onnx.json").write_text(json.dumps(metadata))
        with pytest.raises(OnnxEngineError, match="export again") as error:
            SAM3OnnxTracker(folder)
        assert "\n" not in str(error.value)


def test_tracker_patches_restore_the_model(tiny):
    loaded, _ = tiny
    decoder = loaded.model.mask_decoder
    attention = loaded.model.config._attn_implementation
    with tracker_patches(loaded.model):
        assert "_dynamic_multimask_via_stability" in vars(decoder)
    assert "_dynamic_multimask_via_stability" not in vars(decoder)
    assert loaded.model.config._attn_implementation == attention and not loaded.model.training


def test_a_concept_export_refuses_points(tmp_path, capsys, monkeypatch):
    """--points on a concept export: one line, before any graph loads."""
    from sam3_lora.serve import onnx_engine

    monkeypatch.setattr(onnx_engine, "read_export", lambda folder, task=None: {"task": "concept"})
    image = tmp_path / "img.png"
    picture().save(image)
    assert main(["predict", "--onnx", str(tmp_path), "--image", str(image), "--points", "4,5"]) == 2
    err = capsys.readouterr().err
    assert "--points needs SAM3's tracker" in err and err.count("\n") == 1


def test_interactive_config_through_export_onnx_is_refused():
    """``export_onnx`` (the concept path) names the tracker's function instead of exporting
    the wrong model."""
    from sam3_lora.config import load_config
    from sam3_lora.export.onnx import OnnxExportError, export_onnx

    with pytest.raises(OnnxExportError, match="export_tracker_onnx_from"):
        export_onnx(Path("unused"), Path("/nonexistent-parent/new"), load_config(None, TRACKER))


def test_a_bottleneck_adapter_is_refused_in_one_line_before_the_base_loads(tmp_path, monkeypatch):
    """A bottleneck adapter (``lora.method: adapter``) cannot merge, which an ONNX export needs."""
    from sam3_lora.config import load_config
    from sam3_lora.errors import AdapterError
    from sam3_lora.export.onnx_tracker import load_merged_tracker

    config = LoRAConfig(method="adapter", rank=4, target_modules=["fc2"], apply_to_mask_decoder=True)
    folder = save_adapter(apply_lora_to_model(load_tracker("sam3-tiny").model, config, verbose=False),
                          tmp_path / "adapter")
    monkeypatch.setattr("sam3_lora.lora.weights.load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    with pytest.raises(AdapterError, match="a bottleneck adapter is not linear") as error:
        load_merged_tracker(folder, load_config(None, ["model.task=interactive", "model.source=sam3-tiny"]))
    assert "\n" not in str(error.value)
