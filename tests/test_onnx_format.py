"""The ONNX folder format's graph check (its metadata checks run through the engine in
tests/serve/test_onnx_engine.py, on real graphs in tests/export/test_onnx.py)."""

import pytest

from sam3_lora.errors import Sam3LoraError
from sam3_lora.onnx_format import GRAPH_IO, TASKS, check_graph, read_metadata

STATED = {"graphs": {"text_encoder": {"file": "text_encoder.onnx",
                                      "inputs": {"input_ids": ["prompts", 32], "attention_mask": ["prompts", 32]},
                                      "outputs": {"text_features": ["prompts", 32, 256]}}}}


def test_a_graph_as_stated_passes_dynamic_sizes_match_anything():
    check_graph("text_encoder", {"input_ids": ["K", 32], "attention_mask": [None, 32]},
                {"text_features": ["unk__1", 32, 256]}, STATED)
    assert tuple(STATED["graphs"]["text_encoder"]["inputs"]) == GRAPH_IO["text_encoder"][0]


@pytest.mark.parametrize(("inputs", "outputs", "expected"), [
    ({"pixel_values": ["batch", 3, 112, 112]}, {"fpn_0": [1]}, "has inputs ['pixel_values'], the text_encoder has"),
    ({"attention_mask": ["K", 32], "input_ids": ["K", 32]}, {"text_features": ["K", 32, 256]}, "has inputs"),
    ({"input_ids": ["K", 16], "attention_mask": ["K", 16]}, {"text_features": ["K", 16, 256]},
     "input_ids has shape ['K', 16], sam3_onnx.json states ['prompts', 32]"),
    ({"input_ids": ["K", 32], "attention_mask": ["K", 32]}, {"text_features": ["K", 32]},
     "text_features has shape ['K', 32], sam3_onnx.json states ['prompts', 32, 256]"),
])
def test_a_graph_other_than_stated_is_one_line(inputs, outputs, expected):
    with pytest.raises(Sam3LoraError) as error:
        check_graph("text_encoder", inputs, outputs, STATED)
    assert str(error.value).startswith("text_encoder.onnx: ") and expected in str(error.value)
    assert "the graphs are swapped or damaged" in str(error.value) or "the folder is damaged" in str(error.value)


@pytest.mark.parametrize(("task", "expected"), [
    ("video", "task: Input should be 'concept' or 'interactive' (got 'video')"),
    ("interactive", "graphs: ['vision_encoder'], but task interactive exports have ['image_encoder', 'mask_decoder']"),
])
def test_a_task_and_its_graphs_must_agree(tmp_path, task, expected):
    """``task`` picks the graphs a folder must have (absent: concept, as before it existed)."""
    import json

    assert list(TASKS) == ["concept", "interactive"]
    graph = {"file": "g.onnx", "inputs": {"pixel_values": [1, 3, 14, 14]}, "outputs": {}}
    (tmp_path / "sam3_onnx.json").write_text(json.dumps({
        "format": "sam3-lora-onnx/1", "task": task, "exported_with": {}, "opset": 18,
        "image": {"size": 14, "mean": [0.5] * 3, "std": [0.5] * 3}, "graphs": {"vision_encoder": graph}}))
    with pytest.raises(Sam3LoraError) as error:
        read_metadata(tmp_path)
    assert expected in str(error.value) and "\n" not in str(error.value)
