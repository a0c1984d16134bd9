import numpy as np
import pytest
from PIL import Image

from sam3_lora.config import load_config
from sam3_lora.serve.inference import PromptError, SAM3LoRAInference


@pytest.fixture(scope="module")
def engine():
    config = load_config(None, ["model.task=interactive", "model.source=sam3-tiny"])
    return SAM3LoRAInference(config=config, no_lora=True)


@pytest.fixture
def image():
    return Image.fromarray((np.random.RandomState(0).rand(90, 120, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("prompt", [
    {"points": [[60, 45]]},
    {"points": [[60, 45], [5, 5]], "labels": [1, 0]},
    {"box": [10, 10, 80, 70]},
    {"mask": np.pad(np.ones((30, 40), dtype=bool), ((20, 40), (30, 50)))},
    {"points": [[60, 45]], "box": [10, 10, 80, 70]},
])
def test_segment_answers_one_mask_at_the_images_size(engine, image, prompt):
    answer = engine.segment(image, **prompt)
    assert answer["mask"].shape == (90, 120) and answer["mask"].dtype == bool
    assert 0.0 <= answer["object_score"] <= 1.0 and np.isfinite(answer["score"])


def test_the_prompt_reaches_the_model(engine, image):
    first = engine.segment(image, points=[[60, 45]])
    other = engine.segment(image, points=[[5, 80]])
    assert first["score"] != other["score"] or not np.array_equal(first["mask"], other["mask"])


@pytest.mark.parametrize("prompt, message", [
    ({}, "give points, a box or a mask"),
    ({"points": [[500, 10]]}, "inside the 120x90 image"),
    ({"points": [[10, 10]], "labels": [2]}, "each 1 (object) or 0"),
    ({"points": [[10, 10], [20, 20]], "labels": [1]}, "one label per point (2)"),
    ({"labels": [1]}, "given without points"),
    ({"box": [50, 10, 20, 40]}, "x2 > x1"),
    ({"mask": np.ones((10, 10), dtype=bool)}, "give an (H, W) = (90, 120) mask"),
])
def test_bad_prompts_are_one_line(engine, image, prompt, message):
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        engine.segment(image, **prompt)
    assert "\n" not in str(error.value)


def test_segment_needs_the_tracker(image):
    concept = SAM3LoRAInference(config=load_config(None, ["model.source=sam3-tiny"]), no_lora=True)
    with pytest.raises(PromptError, match="model.task=interactive"):
        concept.segment(image, points=[[10, 10]])
