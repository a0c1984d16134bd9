import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import Sam3TrackerConfig

from sam3_lora.errors import ModelLoadError
from sam3_lora.model.loading import BUNDLED, load_sam3
from sam3_lora.model.tracker import BUNDLED_TRACKER, load_tracker, load_tracker_config


def _click_forward(model, size: int):
    pixels = torch.randn(1, 3, size, size)
    return model(pixel_values=pixels, input_points=torch.tensor([[[[size / 2, size / 2]]]]),
                 input_labels=torch.tensor([[[1]]]))


def test_tiny_preset_tracker_takes_a_click_and_gives_three_masks():
    loaded = load_tracker("sam3-tiny")
    out = _click_forward(loaded.model, 112)
    grid = 4 * (112 // 14)
    assert out.pred_masks.shape == (1, 1, 3, grid, grid)
    assert out.iou_scores.shape == (1, 1, 3) and out.object_score_logits.shape == (1, 1, 1)
    assert loaded.processor.image_size == 112 and loaded.tokenizer is None


def test_preset_heads_follow_the_detector_width():
    """The prompt encoder and mask decoder are as wide as the detector's FPN; at SAM3's 256
    that is transformers' default tracker config (8 heads, MLP 2048)."""
    tiny, small, full = (load_tracker_config(s) for s in ("sam3-tiny", "sam3-small", "sam3"))
    assert tiny.mask_decoder_config.hidden_size == 32 and small.mask_decoder_config.hidden_size == 64
    assert (full.mask_decoder_config.num_attention_heads, full.mask_decoder_config.mlp_dim) == (8, 2048)
    assert full.prompt_encoder_config.image_size == 1008
    default = Sam3TrackerConfig()
    assert full.mask_decoder_config.to_dict() == default.mask_decoder_config.to_dict()


def test_image_size_reaches_the_prompt_encoder():
    loaded = load_tracker("sam3-small", image_size=56)
    assert loaded.model.config.prompt_encoder_config.image_size == 56
    assert _click_forward(loaded.model, 56).pred_masks.shape[-1] == 16


def test_preset_weights_follow_the_seed():
    first, again, other = (load_tracker("sam3-tiny", seed=s).model.state_dict() for s in (0, 0, 1))
    key = "mask_decoder.iou_prediction_head.proj_in.weight"
    assert torch.equal(first[key], again[key]) and not torch.equal(first[key], other[key])


def test_saved_tracker_folder_loads_back(tmp_path):
    loaded = load_tracker("sam3-tiny", seed=3)
    loaded.save_pretrained(tmp_path / "tracker")
    again = load_tracker(str(tmp_path / "tracker"))
    assert type(again.model).__name__ == "Sam3TrackerModel"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def _same_vision(tracker, detector) -> bool:
    mine, theirs = tracker.vision_encoder.state_dict(), detector.vision_encoder.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_detector_folder_gives_the_tracker_its_vit(tmp_path):
    detector = load_sam3("sam3-tiny", seed=5)
    detector.save_pretrained(tmp_path / "detector")
    loaded = load_tracker(str(tmp_path / "detector"), seed=0)
    assert _same_vision(loaded.model, detector.model)
    # The heads are the tracker's own random ones, seeded.
    fresh = load_tracker("sam3-tiny", seed=0).model.state_dict()
    key = "mask_decoder.iou_prediction_head.proj_in.weight"
    assert torch.equal(loaded.model.state_dict()[key], fresh[key])
    assert not _same_vision(load_tracker("sam3-tiny", seed=0).model, detector.model)   # copied, not drawn


def test_wider_tracker_takes_the_detectors_vit_under_a_new_neck(tmp_path):
    """model.tracker_width: the ViT carries over, the neck and heads are built at the width."""
    detector = load_sam3("sam3-tiny", seed=5)
    detector.save_pretrained(tmp_path / "detector")
    loaded = load_tracker(str(tmp_path / "detector"), width=128)
    config = loaded.model.config
    assert config.vision_config.fpn_hidden_size == config.mask_decoder_config.hidden_size == 128
    assert config.mask_decoder_config.num_attention_heads == 4
    mine, theirs = loaded.model.vision_encoder.backbone.state_dict(), detector.model.vision_encoder.backbone.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert _click_forward(loaded.model, 112).pred_masks.shape == (1, 1, 3, 32, 32)
    # A detector's own width keeps its neck: the same as no width at all.
    assert _same_vision(load_tracker(str(tmp_path / "detector"), width=32).model, detector.model)


def test_trained_tracker_keeps_its_width(tmp_path):
    load_tracker("sam3-tiny").save_pretrained(tmp_path / "tracker")
    with pytest.raises(ModelLoadError, match=r"model.tracker_width=128: .* tracker 32 wide.* drop model.tracker_width"):
        load_tracker(str(tmp_path / "tracker"), width=128)


def test_bundled_base_loads_its_trained_tracker():
    loaded = load_tracker("sam3-tiny-shapes")
    shipped = load_file(BUNDLED["sam3-tiny-shapes"] / BUNDLED_TRACKER / "model.safetensors")
    # transformers writes the tracker under SAM3's checkpoint names (tracker_model.*): compare
    # the tensors themselves, by their sums.
    def sums(tensors):
        return sorted(float(t.double().sum()) for t in tensors)

    assert shipped and sums(shipped.values()) == sums(loaded.model.state_dict().values())
    # It runs at 224 px (16 x 16 ViT tokens, masks at 4x: 64 x 64), its shapes' images at 112.
    assert loaded.processor.image_size == 224
    assert _click_forward(loaded.model, 224).pred_masks.shape == (1, 1, 3, 64, 64)
    # Its own ViT: the detector's, fine-tuned for clicks (configs/base-tracker.yaml).
    assert not _same_vision(loaded.model, load_sam3("sam3-tiny-shapes").model)


def test_bundled_base_without_its_tracker_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "sam3-tiny-shapes"
    shutil.copytree(BUNDLED["sam3-tiny-shapes"], folder, ignore=shutil.ignore_patterns(BUNDLED_TRACKER))
    monkeypatch.setitem(BUNDLED, "sam3-tiny-shapes", folder)
    with pytest.raises(ModelLoadError, match="bundled tracker's weights are missing.*reinstall") as error:
        load_tracker("sam3-tiny-shapes")
    assert "\n" not in str(error.value)


def test_folder_of_another_model_is_one_line(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError) as error:
        load_tracker(str(folder))
    assert "bert" in str(error.value) and "\n" not in str(error.value)


def test_folder_without_model_type_is_one_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no model_type") as error:
        load_tracker(str(folder))
    assert "\n" not in str(error.value)


def test_missing_folder_is_the_loaders_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_tracker(str(tmp_path / "nowhere"))


def test_object_predictor_refines_its_previous_mask(monkeypatch):
    from sam3_lora.model.tracker import ObjectPredictor

    model = load_tracker("sam3-tiny").model
    calls = []
    original = model.forward

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model, "forward", spy)
    predictor = ObjectPredictor(model, torch.randn(1, 3, 112, 112), (90, 120))
    mask = predictor([[60, 45]], [1])
    assert mask.shape == (90, 120) and mask.dtype == torch.bool
    assert calls[0]["multimask_output"] and calls[0]["input_masks"] is None
    # Original pixels scale to the 112 px input: x by 112/120, y by 112/90.
    assert torch.allclose(calls[0]["input_points"], torch.tensor([[[[56.0, 56.0]]]]))
    predictor([[60, 45], [10, 10]], [1, 0])
    assert "image_embeddings" in calls[1] and "pixel_values" not in calls[1]   # encoded once
    assert not calls[1]["multimask_output"] and calls[1]["input_masks"].shape == (1, 1, 32, 32)
    predictor.reset()
    predictor(box=[10, 10, 60, 50])
    assert calls[2]["input_masks"] is None and calls[2]["input_boxes"].shape == (1, 1, 4)


def test_new_tracker_encodes_clicks_and_image_positions_in_one_basis():
    """SAM matches a click to the image through one random Fourier basis; transformers draws
    two (buffers, never trained), so a fresh tracker could not learn where its prompt is."""
    for model in (load_tracker("sam3-tiny").model, load_tracker("sam3-tiny", seed=4).model):
        assert torch.equal(model.prompt_encoder.shared_embedding.positional_embedding,
                           model.shared_image_embedding.positional_embedding)


def test_new_tracker_heads_answer_where_the_box_is():
    """With transformers' N(0, 0.02) weights the tiny tracker's first masks were constant to
    1e-5 whatever the prompt; from PyTorch's default initialisation (SAM 2's) they are not."""
    model = load_tracker("sam3-tiny").model
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        first, second = (model(pixel_values=pixels, input_boxes=torch.tensor([[box]]), multimask_output=False)
                         .pred_masks[0, 0, 0] for box in ([5.0, 5.0, 40.0, 40.0], [60.0, 60.0, 110.0, 110.0]))
    assert first.std() > 1e-3 and (first - second).abs().max() > 1e-3


def test_image_embeddings_from_the_encoders_output_are_the_trackers_own():
    """What a feature cache feeds the tracker equals its own image path, with the "no memory"
    embedding made non-zero (transformers adds it to a level the tracker never reads)."""
    from sam3_lora.model.forward import encode_images
    from sam3_lora.model.tracker import image_embeddings

    model = load_tracker("sam3-tiny").model
    with torch.no_grad():
        model.no_memory_embedding.normal_()
        pixels = torch.randn(2, 3, 112, 112)
        expected = model.get_image_embeddings(pixels)
        found = image_embeddings(model, encode_images(model, pixels))
    assert [t.shape for t in found] == [t.shape for t in expected]
    for level, reference in zip(found, expected):
        torch.testing.assert_close(level, reference, rtol=0, atol=0)


def test_a_tracker_written_under_sam3_names_resumes_and_a_misfit_is_refused(tmp_path):
    """transformers writes the tracker as SAM3's checkpoint does (tracker_model.*): a method=full
    checkpoint of it loads back into the tracker (resume), and one of another width is refused
    rather than read with fresh weights where it does not fit."""
    from sam3_lora.model.folders import load_model_weights, write_model

    trained = load_tracker("sam3-tiny", seed=1).model
    (tmp_path / "step").mkdir()
    write_model(trained, None, tmp_path / "step")
    fresh = load_tracker("sam3-tiny", seed=2).model
    load_model_weights(fresh, tmp_path / "step")
    assert all(torch.equal(value, trained.state_dict()[key]) for key, value in fresh.state_dict().items())
    with pytest.raises(ModelLoadError, match="do not fit|cannot be read"):
        load_model_weights(load_tracker("sam3-tiny", width=64).model, tmp_path / "step")
