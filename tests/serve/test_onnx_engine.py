"""The ONNX engine's numpy twins of the PyTorch path's pre- and post-processing stay equal to
it (the graphs themselves are compared with PyTorch in tests/export/test_onnx.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

import sam3_lora.export.onnx_folder as folder_format
import sam3_lora.model.postprocess as torch_post
import sam3_lora.serve.onnx_engine as engine
from sam3_lora.model.processing import BOX_PADDING_LABEL, Sam3InputProcessor, resize_and_normalize
from sam3_lora.model.tokenizer import build_byte_tokenizer


def random_outputs(seed: int, queries: int = 20, mask_size: int = 32) -> dict:
    """One prompt's model outputs: logits spread around the thresholds, boxes partly
    outside [0, 1], mask logits around 0."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(queries, 2, 2, generator=generator) * 1.2 - 0.1
    return {"pred_logits": torch.randn(queries, generator=generator) * 3,
            "presence_logits": torch.randn(1, generator=generator) + 1,
            "pred_boxes": torch.cat([corners.min(1).values, corners.max(1).values], dim=1),
            "pred_masks": torch.randn(queries, mask_size, mask_size, generator=generator) * 4}


@pytest.mark.parametrize("seed, size, threshold, nms, cap", [
    (0, (90, 120), 0.0, None, None),
    (1, (112, 112), 0.3, None, None),
    (2, (333, 97), 0.1, 0.5, None),
    (3, (17, 250), 0.0, None, 5),
    (4, (1008, 1008), 0.2, 0.3, 3),
])
def test_postprocess_twin_equals_torch(seed, size, threshold, nms, cap):
    outputs = random_outputs(seed)
    expected = torch_post.postprocess_query(outputs["pred_logits"], outputs["presence_logits"], outputs["pred_boxes"],
                                            outputs["pred_masks"], size, threshold, nms, max_detections=cap)
    got = engine.postprocess_query(*(outputs[k].numpy() for k in ("pred_logits", "presence_logits", "pred_boxes",
                                                                  "pred_masks")), size, threshold, nms, cap)
    assert len(expected) > 0 and len(got["scores"]) == len(expected)
    np.testing.assert_allclose(got["scores"], expected.scores, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], expected.boxes, atol=1e-3)
    assert got["masks"].shape == expected.masks.shape
    assert (got["masks"] != expected.masks).mean() < 1e-5   # only pixels whose logit is ~0 may differ
    assert got["presence"] == pytest.approx(expected.presence, abs=1e-6)


def test_mask_resize_is_torchs_bilinear():
    """Same values as ``F.interpolate(bilinear, align_corners=False)`` to float32 rounding,
    downscaling and upscaling, odd sizes included: a slip of half a pixel would be 1e-1."""
    rng = np.random.default_rng(0)
    for m, height, width in [(32, 90, 120), (288, 1008, 1008), (32, 13, 300), (32, 31, 17)]:
        logits = rng.standard_normal((2, m, m)).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=(height, width),
                                                   mode="bilinear", align_corners=False)[0].numpy()
        rows, cols = engine.linear_taps(height, m), engine.linear_taps(width, m)
        across = logits[:, :, cols[0]] * cols[2] + logits[:, :, cols[1]] * cols[3]
        values = rows[2][:, None] * across[:, rows[0], :] + rows[3][:, None] * across[:, rows[1], :]
        assert np.abs(values - expected).max() < 2e-6
        assert (engine.resize_masks(logits, height, width) == (values > 0)).all()


def test_no_detections_and_no_masks():
    outputs = random_outputs(5)
    found = engine.postprocess_query(outputs["pred_logits"].numpy(), outputs["presence_logits"].numpy(),
                                     outputs["pred_boxes"].numpy(), None, (40, 50), threshold=1.0)
    assert found["masks"] is None and found["scores"].shape == (0,) and found["boxes"].shape == (0, 4)
    found = engine.postprocess_query(outputs["pred_logits"].numpy(), outputs["presence_logits"].numpy(),
                                     outputs["pred_boxes"].numpy(), outputs["pred_masks"].numpy(), (40, 50), 1.0)
    assert found["masks"].shape == (0, 40, 50)


def test_preprocessing_twin_equals_torch():
    """PIL's float bilinear = torch's antialiased bilinear (processing.resize_and_normalize),
    downscaling, upscaling, odd sizes; within the measured 1.3e-4."""
    rng = np.random.default_rng(0)
    for height, width, size in [(112, 112, 112), (214, 173, 112), (92, 100, 112), (240, 320, 1008), (31, 57, 112)]:
        picture = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
        expected = resize_and_normalize(picture, size).numpy()
        assert np.abs(engine.preprocess_image(picture, size) - expected).max() < 2e-4


def test_tokenizer_twin_equals_transformers(tmp_path):
    from tokenizers import Tokenizer

    tokenizer = build_byte_tokenizer(32)
    tokenizer.save_pretrained(tmp_path)
    prompts = ["red circle", "UPPER case", "naïve ☃", "", "word " * 40]
    spec = {"max_length": 32, "pad_id": tokenizer.pad_token_id, "pad_token": tokenizer.pad_token}
    ids, mask = engine.tokenize(Tokenizer.from_file(str(tmp_path / "tokenizer.json")), spec, prompts)
    expected = Sam3InputProcessor(tokenizer, 112).text(prompts)
    assert np.array_equal(ids, expected["input_ids"].numpy())
    assert np.array_equal(mask, expected["attention_mask"].numpy())


def test_box_prompts_as_the_decoder_takes_them():
    boxes, labels = engine.box_prompts(np.array([[10, 20, 50, 60]]), np.array([[0, 0, 100, 80]]), (100, 80), 3)
    assert boxes.shape == (3, 2, 4) and labels.tolist() == [[1, 0]] * 3
    np.testing.assert_allclose(boxes[0], [[0.3, 0.5, 0.4, 0.5], [0.5, 0.5, 1.0, 1.0]], atol=1e-6)
    boxes, labels = engine.box_prompts(np.zeros((0, 4)), np.zeros((0, 4)), (100, 80), 2)
    assert boxes.shape == (2, 1, 4) and labels.tolist() == [[BOX_PADDING_LABEL]] * 2


def test_shared_constants_agree():
    """The engine may not import torch modules or ``export``: its copies of their constants."""
    assert engine.UPSAMPLE_FLOATS == torch_post.UPSAMPLE_FLOATS
    assert engine.BOX_PADDING_LABEL == BOX_PADDING_LABEL
    assert engine.FORMAT == folder_format.FORMAT and engine.CONFIG_FILE == folder_format.CONFIG_FILE
    assert engine.INSTALL_HINT == folder_format.INSTALL_HINT
    assert engine.GRAPHS == tuple(folder_format.GRAPH_FILES)
