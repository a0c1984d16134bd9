import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import AdapterError, DataError
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.serve.inference import PromptError, SAM3LoRAInference
from tests.conftest import TINY_CONFIG

PROMPTS = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short LoRA run on synthetic shapes; returns its config."""
    root = tmp_path_factory.mktemp("predict")
    synthesize(root / "data", images_per_split={"train": 4, "valid": 2}, image_size=112, seed=4)
    config = load_config(TINY_CONFIG, [f"data.root={root / 'data'}", f"output.dir={root / 'run'}",
                                  "training.max_steps=2", "training.report_to=[]"])
    SAM3LoRATrainer(config, quiet=True).train()
    return config


@pytest.fixture(scope="module")
def engine(run):
    # Threshold 0: a barely trained tiny model is unsure of everything; keep all 20 proposals.
    return SAM3LoRAInference(config=run, detection_threshold=0.0)


@pytest.fixture
def image(run):
    return min((Path(run.data.root) / "valid").glob("*.png"))


def count_calls(module, calls: list):
    return module.register_forward_hook(lambda *args: calls.append(1))


def test_three_prompts_cost_one_image_encoding_and_equal_single_prompts(engine, image):
    sam3 = engine.model.base_model.model
    calls = []
    handle = count_calls(sam3.vision_encoder, calls)
    together = engine.predict(image, PROMPTS)
    handle.remove()
    assert len(calls) == 1
    for prompt, joint in zip(PROMPTS, together, strict=True):
        [alone] = engine.predict(image, [prompt])
        assert joint["prompt"] == alone["prompt"] == prompt
        np.testing.assert_allclose(joint["scores"], alone["scores"], atol=1e-6)
        np.testing.assert_allclose(joint["boxes"], alone["boxes"], atol=1e-3)   # pixels
        assert (joint["masks"] != alone["masks"]).mean() < 1e-3


def test_text_features_are_cached_across_images(engine, image):
    calls = []
    engine.predict(image, PROMPTS)
    handle = count_calls(engine.model.base_model.model.text_encoder, calls)
    engine.predict(Image.open(image).transpose(Image.FLIP_LEFT_RIGHT), PROMPTS)
    handle.remove()
    assert calls == []


@pytest.mark.parametrize("prompts, boxes", [
    (["red circle"], None),                       # text only
    (None, [[10, 10, 60, 60]]),                   # boxes only
    (["red circle", "blue square"], [[10, 10, 60, 60]]),   # text and boxes
])
def test_output_shapes_for_every_prompt_kind(engine, image, prompts, boxes):
    width, height = Image.open(image).size
    found = engine.predict(np.asarray(Image.open(image)), prompts, boxes=boxes)
    assert [f["prompt"] for f in found] == (prompts or ["boxes"])
    for result in found:
        n = result["num_detections"]
        assert result["boxes"].shape == (n, 4) and result["scores"].shape == (n,)
        assert result["masks"].shape == (n, height, width) and result["masks"].dtype == np.bool_


def test_predict_batch_equals_predict(engine, image):
    flipped = Image.open(image).transpose(Image.FLIP_TOP_BOTTOM)
    batch = engine.predict_batch([image, flipped], PROMPTS[:2])
    for picture, answers in zip([image, flipped], batch, strict=True):
        for joint, alone in zip(answers, engine.predict(picture, PROMPTS[:2]), strict=True):
            np.testing.assert_allclose(joint["scores"], alone["scores"], atol=1e-6)


@pytest.mark.parametrize("call, error, message", [
    (lambda e, i: e.predict(i, []), PromptError, "no prompt"),
    (lambda e, i: e.predict(i, ["x"], boxes=[[50, 10, 20, 60]]), PromptError, "needs x2 > x1"),
    (lambda e, i: e.predict(i, ["x"], boxes=[[0, 0, 5000, 60]]), PromptError, "outside the 112x112 image"),
    (lambda e, i: e.predict(i, ["x"], boxes=[[1, 2, 3]]), PromptError, "4 numbers"),
    (lambda e, i: e.predict(i.parent / "missing.png", ["x"]), DataError, "missing.png"),
])
def test_bad_prompts_and_images(engine, image, call, error, message):
    with pytest.raises(error, match=message):
        call(engine, image)


def test_weights_that_are_not_an_adapter(run, tmp_path):
    with pytest.raises(AdapterError, match="not an adapter folder"):
        SAM3LoRAInference(config=run, weights_path=tmp_path)


def test_cli_predict_writes_overlays_and_coco_json(run, tmp_path, capsys):
    from sam3_lora.evaluation.inputs import prepare

    folder = f"{run.data.root}/valid"
    config = f"{run.output.dir}/config.yaml"
    assert main(["predict", "--config", config, "--image", folder, "--prompt", *PROMPTS[:2], "--threshold", "0",
                 "--output", str(tmp_path / "out")]) == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    sources = sorted(Path(folder).glob("*.png"))
    assert len(pngs) == 2 and [Image.open(p).size for p in pngs] == [Image.open(s).size for s in sources]
    entries = json.loads(pngs[0].with_suffix(".json").read_text())
    assert {e["prompt"] for e in entries} == set(PROMPTS[:2]) and len(entries) == 40
    width, height = Image.open(sources[0]).size
    gt = {"images": [{"id": 0, "width": width, "height": height, "file_name": pngs[0].name}],
          "categories": [{"id": 1, "name": PROMPTS[0]}, {"id": 2, "name": PROMPTS[1]}], "annotations": []}
    prepare(gt, entries, "segm")   # the file is COCO results that evaluate accepts
    assert capsys.readouterr().out.count("->") == 2


@pytest.mark.parametrize("output, message", [
    ("file", "is a file; give a folder"),
    ("input", "is an input image"),
])
def test_cli_predict_refuses_bad_outputs(run, tmp_path, capsys, output, message):
    images = f"{run.data.root}/valid"
    target = tmp_path / "taken"
    target.write_text("x")
    first = min(Path(images).glob("*.png"))
    args = ["predict", "--config", f"{run.output.dir}/config.yaml", "--prompt", "x"]
    args += ["--image", images, "--output", str(target)] if output == "file" else ["--image", str(first), "--output", str(first)]
    before = first.read_bytes()
    assert main(args) == 2
    assert message in capsys.readouterr().err and first.read_bytes() == before


def test_text_features_are_cached_per_adapter(engine):
    adapted, _ = engine.text_features(["red circle"])
    with engine.base_model():
        assert engine.adapter is None
        base, _ = engine.text_features(["red circle"])
    with engine.using(None):
        assert torch.equal(engine.text_features(["red circle"])[0], base)
    assert engine.adapter == "default"
    assert torch.equal(engine.text_features(["red circle"])[0], adapted)
    assert {("default", "red circle"), (None, "red circle")} <= set(engine._text_cache)
    with pytest.raises(PromptError, match="'other' is not loaded; loaded: default"):
        engine.set_adapter("other")


def test_model_dtype_sets_the_precision_prediction_runs_in(run, engine, image, tmp_path, capsys):
    """model.dtype=bfloat16: the base is held and run in bf16 (the adapter stays float32), on
    every prompt kind, and answers as float32 does up to rounding; the CLI takes the override."""
    config = load_config(Path(run.output.dir) / "config.yaml", ["model.dtype=bfloat16"])
    half = SAM3LoRAInference(config=config, detection_threshold=0.0)
    params = dict(half.model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    for found, reference in zip(half.predict(image, PROMPTS), engine.predict(image, PROMPTS), strict=True):
        assert found["scores"].dtype == np.float32 and found["num_detections"] == reference["num_detections"]
        np.testing.assert_allclose(np.sort(found["scores"]), np.sort(reference["scores"]), rtol=0.05, atol=1e-3)
    [boxed] = half.predict(image, ["red circle"], boxes=[[10, 10, 60, 60]])
    assert boxed["boxes"].shape == (20, 4)
    assert main(["predict", "--config", f"{run.output.dir}/config.yaml", "model.dtype=bfloat16", "--image", str(image),
                 "--prompt", PROMPTS[0], "--output", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").is_file()
