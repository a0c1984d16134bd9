import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Sam3Model, Sam3TrackerVideoInferenceSession
from transformers.models.sam3_video import modeling_sam3_video

from sam3_lora.errors import ModelLoadError, Sam3LoraWarning
from sam3_lora.model.loading import BUNDLED, LoadedSam3, seeded, tiny_config
from sam3_lora.model.processing import Sam3InputProcessor
from sam3_lora.model.tokenizer import build_byte_tokenizer
from sam3_lora.model.tracker import LoadedTracker, load_tracker, new_tracker, tracker_config
from sam3_lora.model.video import (
    BUNDLED_VIDEO_TRACKER,
    TorchCvUtils,
    check_video_source,
    fit_session,
    install_postprocessing_fallback,
    load_video_model,
    load_video_tracker,
    memory_window,
    share_image_tracker,
    track_from_masks,
)

WIDTH = 128   # the narrowest tracker that runs on video (a multiple of 64, above 64)


def write_tracker_folder(folder, seed=0):
    """A random image tracker 128 wide on the tiny ViT (112 px), as save_pretrained writes it."""
    LoadedTracker(new_tracker(tracker_config(tiny_config(width=WIDTH)), seed), None, "test").save_pretrained(folder)
    return folder


def write_detector_folder(folder, seed=0):
    """A random tiny SAM3 detector with a 128-wide FPN, model and tokenizer."""
    with seeded(seed):
        model = Sam3Model(tiny_config(width=WIDTH))
    LoadedSam3(model, Sam3InputProcessor(build_byte_tokenizer(32), 112), "test").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tracker_folder(tmp_path_factory):
    return write_tracker_folder(tmp_path_factory.mktemp("tracker"))


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    return write_detector_folder(tmp_path_factory.mktemp("detector"))


def quietly(load, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        return load(*args, **kwargs)


def test_an_image_tracker_becomes_a_video_tracker_with_all_its_weights(tracker_folder):
    with pytest.warns(Sam3LoraWarning, match="memory is new and random"):
        loaded = load_video_tracker(str(tracker_folder))
    image = LoadedTracker(new_tracker(tracker_config(tiny_config(width=WIDTH))), None, "")
    video = loaded.model.state_dict()
    for key, value in image.model.state_dict().items():   # key for key, shape for shape
        assert torch.equal(video[key], value), key
    assert loaded.processor.image_size == 112 and loaded.model.config.memory_encoder_output_channels == 64


def test_a_video_tracker_folder_reads_back_as_saved_without_warning(tracker_folder, tmp_path):
    loaded = quietly(load_video_tracker, str(tracker_folder), seed=3)
    loaded.save_pretrained(tmp_path / "video")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Sam3LoraWarning)
        again = load_video_tracker(str(tmp_path / "video"))
    for (key, a), b in zip(loaded.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_the_tracker_of_a_whole_video_checkpoint_reads_the_detectors_vit(detector_folder, tmp_path):
    concept = quietly(load_video_model, str(detector_folder))
    concept.save_pretrained(tmp_path / "sam3_video")
    tracker = load_video_tracker(str(tmp_path / "sam3_video")).model.state_dict()
    whole = concept.model.state_dict()
    assert torch.equal(tracker["vision_encoder.neck.fpn_layers.0.proj1.weight"],
                       whole["tracker_neck.fpn_layers.0.proj1.weight"])
    assert torch.equal(tracker["vision_encoder.backbone.layers.0.attention.q_proj.weight"],
                       whole["detector_model.vision_encoder.backbone.layers.0.attention.q_proj.weight"])
    assert torch.equal(tracker["memory_attention.layers.0.self_attn.q_proj.weight"],
                       whole["tracker_model.memory_attention.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize(("source", "concept"), [
    ("sam3-tiny", False), ("sam3-small", False),   # presets: trackers as wide as their FPN, 32 and 64
    ("sam3-tiny", True), ("sam3-tiny-shapes", True), ("sam3-small", True),   # concept: the detector's FPN
])
def test_trackers_too_narrow_for_video_are_refused_in_one_line_before_loading(source, concept):
    with pytest.raises(ModelLoadError, match=r"multiple of 64 and above it") as error:
        check_video_source(source, concept)
    assert "\n" not in str(error.value) and source in str(error.value)
    with pytest.raises(ModelLoadError, match="wide"):
        (load_video_model if concept else load_video_tracker)(source)


def test_the_bundled_base_tracks_video_with_its_trained_memory_and_keeps_its_image_tracker():
    """sam3-tiny-shapes' video-tracker/ loads as shipped, without the new-memory warning: its ViT
    and prompt encoder are the image tracker's (frozen while its memory trained), its mask
    decoder its own, and the image tracker (tracker/) stays what it was."""
    image = quietly(load_tracker, "sam3-tiny-shapes").model.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Sam3LoraWarning)
        video = load_video_tracker("sam3-tiny-shapes").model.state_dict()
    shipped = load_file(BUNDLED["sam3-tiny-shapes"] / BUNDLED_VIDEO_TRACKER / "model.safetensors")
    assert sorted(float(t.double().sum()) for t in shipped.values()) == sorted(
        float(t.double().sum()) for t in video.values())
    shared = [key for key in image if key.startswith(("vision_encoder.", "prompt_encoder."))]
    assert shared and all(torch.equal(video[key], image[key]) for key in shared)
    decoder = [key for key in image if key.startswith("mask_decoder.")]
    assert any(not torch.equal(video[key], image[key]) for key in decoder)


def test_a_bundled_base_without_a_video_tracker_gets_a_new_memory(tmp_path, monkeypatch):
    """Without video-tracker/, the bundled base's video tracker is its image tracker (128 wide)
    with a new memory, and a warning says so."""
    folder = tmp_path / "sam3-tiny-shapes"
    shutil.copytree(BUNDLED["sam3-tiny-shapes"], folder, ignore=shutil.ignore_patterns(BUNDLED_VIDEO_TRACKER))
    monkeypatch.setitem(BUNDLED, "sam3-tiny-shapes", folder)
    image = quietly(load_tracker, "sam3-tiny-shapes").model
    with pytest.warns(Warning, match="holds no video memory"):
        video = load_video_tracker("sam3-tiny-shapes").model
    assert video.config.mask_decoder_config.hidden_size == 128
    assert torch.equal(video.state_dict()["mask_decoder.iou_token.weight"], image.state_dict()["mask_decoder.iou_token.weight"])


def test_image_size_moves_every_size_and_is_checked(tracker_folder):
    loaded = quietly(load_video_tracker, str(tracker_folder), image_size=56)
    assert loaded.model.config.vision_config.backbone_feature_sizes == [[16, 16], [8, 8], [4, 4]]
    assert loaded.model.config.memory_attention_rope_feat_sizes == [4, 4] and loaded.processor.image_size == 56
    with pytest.raises(ModelLoadError, match="multiple of the patch size"):
        load_video_tracker(str(tracker_folder), image_size=50)


def test_the_concept_model_holds_the_given_detector_and_a_neck_like_its_own(detector_folder):
    detector = Sam3Model.from_pretrained(str(detector_folder))
    loaded = quietly(load_video_model, str(detector_folder), detector=detector)
    assert loaded.model.detector_model is detector
    assert loaded.tokenizer is not None and loaded.processor.image_size == 112
    neck, own = loaded.model.tracker_neck.state_dict(), detector.vision_encoder.neck.state_dict()
    assert all(torch.equal(neck[key], own[key]) for key in own)


def test_shared_image_modules_are_the_image_trackers_own_objects(tracker_folder):
    video = quietly(load_video_tracker, str(tracker_folder)).model
    image = new_tracker(tracker_config(tiny_config(width=WIDTH)), seed=5)
    share_image_tracker(video, image)
    assert video.vision_encoder is image.vision_encoder and video.mask_decoder is image.mask_decoder
    assert video.no_memory_embedding is image.no_memory_embedding


def session_outputs(model, frames: int, trim: bool, prompted: int = 1) -> tuple[list[torch.Tensor], int]:
    """Masks of one object clicked on the first ``prompted`` frames through ``frames`` random
    frames, and the most frame outputs the session held at once."""
    video = torch.randn(frames, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    session = Sam3TrackerVideoInferenceSession(video=video, video_height=112, video_width=112, dtype=torch.float32)
    for index in range(prompted):
        session.add_point_inputs(session.obj_id_to_idx(1), index, {
            "point_coords": torch.tensor([[[[50.0 + index, 60.0]]]]), "point_labels": torch.tensor([[[1]]])})
        session.obj_with_new_inputs = [1]
        model(session, frame_idx=index)   # a conditioning frame each
    masks, held = [], 0
    for out in model.propagate_in_video_iterator(session, start_frame_idx=prompted - 1):
        masks.append(out.pred_masks.clone())
        if trim:
            fit_session(session, out.frame_idx, memory_window(model.config))
        held = max(held, len(session.output_dict_per_obj[0]["non_cond_frame_outputs"]))
    return masks, held


def test_a_fitted_session_holds_a_window_and_tracks_exactly_as_the_whole_one(tracker_folder):
    model = quietly(load_video_tracker, str(tracker_folder)).model
    model.config.max_object_pointers_in_encoder = 4   # a window of num_maskmem (7) frames: a short test
    frames = memory_window(model.config) + 5
    whole, held_whole = session_outputs(model, frames, trim=False)
    fitted, held_fitted = session_outputs(model, frames, trim=True)
    assert held_whole == frames - 1 and held_fitted <= memory_window(model.config) + 1
    for a, b in zip(whole, fitted, strict=True):
        assert torch.equal(a, b)


def test_conditioning_frames_far_behind_keep_only_their_pointers_and_tracking_is_unchanged(tracker_folder):
    model = quietly(load_video_tracker, str(tracker_folder)).model
    model.config.max_object_pointers_in_encoder = 4
    frames = 6 + memory_window(model.config) + 4   # six prompted frames, then past the window
    whole, _ = session_outputs(model, frames, trim=False, prompted=6)
    fitted, _ = session_outputs(model, frames, trim=True, prompted=6)
    for a, b in zip(whole, fitted, strict=True):
        assert torch.equal(a, b)


def test_cpu_nms_keeps_the_best_of_each_overlapping_group():
    ious = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.05], [0.0, 0.05, 1.0]])
    kept = TorchCvUtils.generic_nms(ious, torch.tensor([0.5, 0.9, 0.7]), 0.1)
    assert kept.tolist() == [1, 2]   # 0 overlaps the better 1; 2 overlaps 1 by 0.05 only
    assert TorchCvUtils.generic_nms(ious, torch.tensor([0.5, 0.9, 0.7]), 0.9).tolist() == [1, 2, 0]


def test_cpu_connected_components_are_8_connected_with_their_areas():
    mask = np.zeros((1, 1, 5, 6), dtype=np.uint8)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = 1    # diagonal neighbours: one component of 2
    mask[0, 0, 3:5, 3:6] = 1                   # a block of 6
    labels, counts = TorchCvUtils.cc_2d(torch.from_numpy(mask))
    assert counts[0, 0, 0, 0] == counts[0, 0, 1, 1] == 2 and counts[0, 0, 4, 5] == 6 and counts[0, 0, 2, 2] == 0
    assert labels[0, 0, 0, 0] == labels[0, 0, 1, 1] != labels[0, 0, 3, 3] and labels.dtype == counts.dtype == torch.int32


def test_without_kernels_the_video_model_gets_the_cpu_fallback(monkeypatch):
    monkeypatch.setattr(modeling_sam3_video, "cv_utils_kernel", None)
    monkeypatch.setattr("transformers.utils.is_kernels_available", lambda: False)
    assert install_postprocessing_fallback()
    assert isinstance(modeling_sam3_video.cv_utils_kernel, TorchCvUtils)
    masks = torch.zeros(3, 8, 8)
    masks[0, 1:5, 1:5] = masks[1, 1:5, 1:4] = masks[2, 6:8, 6:8] = 1.0
    keep = modeling_sam3_video.nms_masks(torch.tensor([0.9, 0.8, 0.7]), masks, 0.5, 0.5)
    assert keep.tolist() == [True, False, True]   # transformers' own NMS, through the fallback


def test_the_image_tracker_of_a_video_tracker_folder_loads_as_its_part(tracker_folder, tmp_path):
    """``model.task: interactive`` (and so ``SAM3LoRAInference``) on a video tracker's folder,
    as a video base will be: its image part, weight for weight."""
    video = quietly(load_video_tracker, str(tracker_folder), seed=4)
    video.save_pretrained(tmp_path / "video")
    image = load_tracker(str(tmp_path / "video")).model.state_dict()
    whole = video.model.state_dict()
    assert image and all(torch.equal(whole[key], value) for key, value in image.items())


def test_objects_prompted_by_masks_are_tracked_from_their_frame_at_the_videos_size(tracker_folder):
    """Two masks on frame 2 of five (input 112 px, video 160 x 120): frames 2..4 come back,
    both objects on each, as logits at the video's size; on frame 2 each mask is its prompt
    (a mask prompt is the prompted frame's answer), resized."""
    model = quietly(load_video_tracker, str(tracker_folder)).model
    generator = torch.Generator().manual_seed(0)
    frames = {index: torch.randn(3, 112, 112, generator=generator) for index in range(5)}
    square, band = torch.zeros(112, 112, dtype=torch.bool), torch.zeros(112, 112, dtype=torch.bool)
    square[20:60, 30:70] = True
    band[80:100, :] = True
    out = list(track_from_masks(model, frames, (160, 120), {3: square, 7: band}, start=2))
    assert [index for index, _, _ in out] == [2, 3, 4]
    assert all(ids.tolist() == [3, 7] and logits.shape == (2, 120, 160) for _, ids, logits in out)
    for prompt, predicted in zip((square, band), out[0][2] > 0, strict=True):
        expected = torch.nn.functional.interpolate(prompt[None, None].float(), size=(120, 160))[0, 0] > 0
        assert (expected & predicted).sum() / (expected | predicted).sum() > 0.9
