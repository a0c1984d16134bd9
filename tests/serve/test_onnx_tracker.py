"""The ONNX tracker engine's numpy twins of what transformers and ``serve.tracker`` do in
torch (the engine against whole exports: tests/export/test_onnx_tracker.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3_lora.data.masks import mask_to_box
from sam3_lora.model.tracker import load_tracker
from sam3_lora.serve.onnx_tracker import prompt_tokens, resize_mask_prompt
from sam3_lora.serve.prompts import as_prediction, mask_box


@pytest.fixture(scope="module")
def prompt_encoder():
    return load_tracker("sam3-tiny").model.prompt_encoder


@pytest.mark.parametrize("case", ["points", "box", "points and box", "neither"])
def test_prompt_tokens_embed_as_transformers_orders_them(prompt_encoder, case):
    """Clicks, then a box's corners (labels 2 / 3), then one "not a point", through
    ``_embed_points`` = transformers' own points + box embedding, token for token."""
    points = np.array([[12.0, 40.0], [90.0, 7.5]]) if "points" in case else None
    labels = np.array([1, 0]) if points is not None else None
    box = np.array([5.0, 6.0, 100.0, 80.0]) if "box" in case else None
    scale = np.array([112 / 130, 112 / 90])
    coords, marks = prompt_tokens(points, labels, box, scale)
    got = prompt_encoder._embed_points(torch.from_numpy(coords)[:, None], torch.from_numpy(marks)[:, None], pad=False)
    inputs = {"input_points": None, "input_labels": None, "input_boxes": None}
    if points is not None:
        inputs["input_points"] = torch.tensor(points * scale, dtype=torch.float)[None, None]
        inputs["input_labels"] = torch.tensor(labels)[None, None]
    if box is not None:
        inputs["input_boxes"] = torch.tensor(box * np.tile(scale, 2), dtype=torch.float)[None, None]
    if points is None and box is None:   # transformers' forward pads an empty prompt with one "not a point"
        inputs.update(input_points=torch.zeros(1, 1, 1, 2), input_labels=-torch.ones(1, 1, 1, dtype=torch.int32))
    expected, _ = prompt_encoder(**inputs, input_masks=None)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)


def test_mask_prompt_resize_is_torchs_antialiased_bilinear():
    rng = np.random.default_rng(0)
    for height, width, side in ((90, 130, 32), (300, 200, 32), (20, 17, 32)):
        mask = (rng.random((height, width)) > 0.5).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(mask)[None, None], size=(side, side), mode="bilinear",
                                 antialias=True).numpy()
        got = resize_mask_prompt(mask, side)
        assert got.shape == (1, 1, side, side) and np.abs(got - expected).max() < 1e-4


def test_mask_box_is_mask_to_box():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((30, 40)) > rng.uniform(0.9, 1.0)
        assert mask_box(mask).tolist() == mask_to_box(mask).tolist()
    answer = {"mask": np.zeros((5, 6), bool), "score": 0.5, "object_score": 0.25}
    prediction = as_prediction(answer)
    assert prediction["boxes"].tolist() == [[0, 0, 0, 0]] and prediction["presence"] == 0.25
