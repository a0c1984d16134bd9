"""The ONNX engine's numpy twins of the PyTorch path's pre- and post-processing stay equal to
it (the graphs themselves are compared with PyTorch in tests/export/test_onnx.py), and a
damaged or hostile export folder is refused in one line before any file in it is opened
(its metadata alone here; its graphs and tokenizer in tests/export/test_onnx.py)."""

import json
from pathlib import Path

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


# ---- a damaged or hostile export folder: one line, before anything is opened ---------------------

def stated_metadata(size: int = 112, length: int = 32) -> dict:
    """A ``sam3_onnx.json`` as the export writes it (the parts a reader checks) for a model of
    ``size`` px and ``length`` tokens."""
    levels = {f"fpn_{i}": ["batch", 256, scale * size // 14, scale * size // 14] for i, scale in enumerate((4, 2, 1))}
    return {
        "format": "sam3-lora-onnx/1", "exported_with": {"onnxruntime": "1.20.0"}, "opset": 18,
        "image": {"size": size, "mean": [0.5] * 3, "std": [0.5] * 3},
        "text": {"file": "tokenizer.json", "max_length": length, "pad_id": 49407, "pad_token": "<|endoftext|>"},
        "graphs": {
            "vision_encoder": {"file": "vision_encoder.onnx", "inputs": {"pixel_values": ["batch", 3, size, size]},
                               "outputs": levels},
            "text_encoder": {"file": "text_encoder.onnx",
                             "inputs": {"input_ids": ["prompts", length], "attention_mask": ["prompts", length]},
                             "outputs": {"text_features": ["prompts", length, 256]}},
            "prompt_decoder": {"file": "prompt_decoder.onnx",
                               "inputs": {**{k: [1, *v[1:]] for k, v in levels.items()},
                                          "text_features": ["prompts", length, 256], "text_mask": ["prompts", length],
                                          "input_boxes": ["prompts", "boxes", 4],
                                          "input_boxes_labels": ["prompts", "boxes"]},
                               "outputs": {"pred_logits": ["prompts", 200], "pred_boxes": ["prompts", 200, 4],
                                           "pred_masks": ["prompts", 200, 32, 32], "presence_logits": ["prompts", 1]}},
        },
        "quantization": None,
    }


@pytest.fixture
def nothing_opens(monkeypatch):
    """Any graph or tokenizer opened fails the test: a refusal must come before."""
    import onnxruntime
    import tokenizers

    def opened(*args, **kwargs):
        raise AssertionError(f"opened {args[:1]}")

    monkeypatch.setattr(onnxruntime, "InferenceSession", opened)
    monkeypatch.setattr(tokenizers.Tokenizer, "from_file", opened)


def fake_export(folder: Path, metadata) -> Path:
    """An export folder whose files are placeholders: only ``sam3_onnx.json`` is real."""
    folder.mkdir(exist_ok=True)
    for name in ("vision_encoder.onnx", "text_encoder.onnx", "prompt_decoder.onnx", "tokenizer.json"):
        (folder / name).write_bytes(b"placeholder")
    (folder / "sam3_onnx.json").write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))
    return folder


def edited(path: str, value) -> dict:
    """``stated_metadata()`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    metadata = stated_metadata()
    *parents, leaf = path.split(".")
    node = metadata
    for part in parents:
        node = node[part]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return metadata


DAMAGED = {
    "deep JSON": ("[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError)"),
    "garbage": ("{not json", "not valid JSON"),
    "a list": (json.dumps([1, 2]), "is a JSON list, not an object"),
    "no graphs": (edited("graphs", ...), "graphs: Field required"),
    "max_length 5": (edited("text.max_length", 5), "text.max_length 5 disagrees with the text encoder's input"),
    "max_length -1": (edited("text.max_length", -1), "text.max_length: Input should be greater than or equal to 1"),
    "max_length '32'": (edited("text.max_length", "32"), "text.max_length: Input should be a valid integer"),
    "max_length 1e9": (edited("text.max_length", 1e9), "text.max_length: Input should be a valid integer"),
    "max_length 10**9": (edited("text.max_length", 10**9), "text.max_length: Input should be less than or equal"),
    "pad_id 'x'": (edited("text.pad_id", "x"), "text.pad_id: Input should be a valid integer"),
    "pad_id 1e12": (edited("text.pad_id", 10**12), "text.pad_id: Input should be less than or equal"),
    "size 0": (edited("image.size", 0), "image.size: Input should be greater than or equal to 14"),
    "size -5": (edited("image.size", -5), "image.size: Input should be greater than or equal to 14"),
    "size 56": (edited("image.size", 56), "image.size 56 disagrees with the vision encoder's input"),
    "size 1e9": (edited("image.size", 1e9), "image.size: Input should be a valid integer"),
    "size 112.7": (edited("image.size", 112.7), "image.size: Input should be a valid integer"),
    "mean []": (edited("image.mean", []), "image.mean: List should have at least 3 items"),
    "mean 'abc'": (edited("image.mean", "abc"), "image.mean: Input should be a valid list"),
    "std NaN": (edited("image.std", [0.5, float("nan"), 0.5]), "image.std.1: Input should be a finite number"),
    "std 0": (edited("image.std", [0.5, 0, 0.5]), "image.std.1: Input should be greater than 0"),
    "exported_with 'x'": (edited("exported_with", "x"), "exported_with: Input should be a valid dictionary"),
    "graph names": (edited("graphs.text_encoder.outputs", {"fpn_0": [1]}), "graphs.text_encoder has inputs"),
    "no tokenizer": (edited("text.file", "gone.json"), "text.file: "),
    "empty graph name": (edited("graphs.vision_encoder.file", ""),
                         "graphs.vision_encoder.file: String should have at least 1 character")
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_metadata_is_one_line_before_anything_opens(case, tmp_path, nothing_opens):
    metadata, expected = DAMAGED[case]
    folder = fake_export(tmp_path / "export", metadata)
    with pytest.raises(engine.OnnxEngineError) as error:
        engine.SAM3OnnxInference(folder)
    message = str(error.value)
    assert expected in message and "\n" not in message and len(message) < 400, message
    assert str(folder) in message


def test_metadata_that_is_not_utf8(tmp_path, nothing_opens):
    folder = fake_export(tmp_path / "export", stated_metadata())
    (folder / "sam3_onnx.json").write_bytes(json.dumps(stated_metadata()).encode("utf-16"))
    with pytest.raises(engine.OnnxEngineError, match=r"sam3_onnx.json: not UTF-8 text \(byte at offset 0\)"):
        engine.SAM3OnnxInference(folder)


def outside_names(tmp_path) -> dict[str, str]:
    """Names leading to ``tmp_path/outside/secret``: absolute, climbing, through a link."""
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("not yours")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "link").symlink_to(secret)
    (tmp_path / "export" / "dir-link").symlink_to(secret.parent, target_is_directory=True)
    return {"absolute": str(secret), "climbing": "../outside/secret", "link": "link", "link in path": "dir-link/secret"}


@pytest.mark.parametrize("field", ["graphs.vision_encoder.file", "graphs.prompt_decoder.file", "text.file"])
@pytest.mark.parametrize("how", ["absolute", "climbing", "link", "link in path"])
def test_files_named_outside_the_folder_are_refused_unopened(field, how, tmp_path, nothing_opens):
    name = outside_names(tmp_path)[how]
    folder = fake_export(tmp_path / "export", edited(field, name))
    with pytest.raises(engine.OnnxEngineError) as error:
        engine.SAM3OnnxInference(folder)
    assert f"{field} {name!r} leads outside {folder}; refused, nothing opened" in str(error.value)
    assert (tmp_path / "outside" / "secret").read_text() == "not yours"


def test_external_data_linked_outside_is_refused(tmp_path, nothing_opens):
    """A graph's weights file (GRAPH.onnx.data) is part of the graph."""
    outside_names(tmp_path)
    folder = fake_export(tmp_path / "export", stated_metadata())
    (folder / "text_encoder.onnx.data").symlink_to(tmp_path / "outside" / "secret")
    with pytest.raises(engine.OnnxEngineError, match="graphs.text_encoder.file 'text_encoder.onnx' leads outside"):
        engine.SAM3OnnxInference(folder)


def test_a_fitting_folder_passes_the_metadata_checks(tmp_path):
    """The checks above refuse damage, not the format: the same folder, undamaged, is read."""
    folder = fake_export(tmp_path / "export", stated_metadata())
    (folder / "link.onnx").symlink_to(folder / "vision_encoder.onnx")   # a link inside the folder is fine
    metadata = edited("graphs.vision_encoder.file", "link.onnx")
    (folder / "sam3_onnx.json").write_text(json.dumps(metadata))
    assert engine.read_export(folder) == metadata
