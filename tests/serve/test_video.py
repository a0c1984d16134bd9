import json
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.config import LoRAConfig, load_config
from sam3_lora.data.rle import as_compressed, decode
from sam3_lora.errors import Sam3LoraWarning
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.loading import seeded, tiny_config
from sam3_lora.model.tracker import new_tracker, tracker_config
from sam3_lora.model.video import load_video_tracker
from sam3_lora.serve.inference import SAM3LoRAInference
from sam3_lora.serve.prompts import PromptError
from sam3_lora.serve.video import (
    MASKLETS_FILE,
    FrameFeed,
    FrameFolder,
    TrackWriter,
    VideoEncoder,
    VideoInputError,
    index_mask,
    open_video,
    video_model,
    video_tracker,
)
from tests.model.test_video import WIDTH, write_detector_folder, write_tracker_folder

FRAMES, SIZE = 6, (120, 90)   # (W, H)


def write_frames(folder, frames=FRAMES, size=SIZE):
    """A red square moving right on black, one PNG a frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(frames):
        pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        pixels[20:50, 30 + 3 * index:60 + 3 * index] = (230, 20, 20)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    return folder


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("clip") / "frames")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An interactive adapter that changes the tracker's answers (LoRA B made non-zero)."""
    folder = tmp_path_factory.mktemp("tracker")
    write_tracker_folder(folder / "base")
    with seeded(0):   # PEFT draws LoRA's A from torch's generator
        model = apply_lora_to_model(new_tracker(tracker_config(tiny_config(width=WIDTH))),
                                    LoRAConfig(rank=2, target_modules=["all"]), verbose=False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    save_adapter(model, folder / "adapter", base_source=str(folder / "base"))
    return folder


@pytest.fixture(scope="module")
def tracker(adapter):
    config = load_config(None, ["model.task=interactive", f"model.source={adapter / 'base'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        engine = SAM3LoRAInference(config=config, weights_path=adapter / "adapter")
        list(engine.track(_one_frame_clip(adapter), points=[[5, 5]]))   # builds the video tracker once
    return engine


def _one_frame_clip(root):
    return write_frames(root / "one", frames=1)


@pytest.fixture(scope="module")
def concept(tmp_path_factory):
    folder = write_detector_folder(tmp_path_factory.mktemp("detector"))
    engine = SAM3LoRAInference(config=load_config(None, [f"model.source={folder}"]), no_lora=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        model, _ = video_model(engine)
    # A random detector scores everything near 0.26: let all of it through, to see masklets.
    model.score_threshold_detection = model.new_det_thresh = 0.0
    return engine


@pytest.mark.parametrize("start", [0, 3])
def test_clicked_objects_are_tracked_on_every_frame_in_order(tracker, frames, start):
    tracked = list(tracker.track(frames, points=[[45, 35]], frame=start))
    assert [frame.index for frame in tracked] == list(range(FRAMES))
    assert [frame.name for frame in tracked] == [f"{i:05d}" for i in range(FRAMES)]
    for frame in tracked:
        assert frame.object_ids.tolist() == [1] and frame.prompts == ["object"]
        assert frame.masks.shape == (1, SIZE[1], SIZE[0]) and frame.masks.dtype == bool
        assert frame.image.size == SIZE and 0 <= frame.scores[0] <= 1


@pytest.mark.parametrize("start", [0, 4])
def test_on_the_prompted_frame_the_video_tracker_answers_as_segment_with_the_adapter(tracker, frames, start):
    tracked = list(tracker.track(frames, points=[[45, 35], [100, 80]], labels=[1, 0], frame=start))
    image = Image.open(frames / f"{start:05d}.png").convert("RGB")
    answer = tracker.segment(image, points=[[45, 35], [100, 80]], labels=[1, 0])
    assert tracked[start].scores[0] == pytest.approx(answer["object_score"], abs=1e-6)
    # SAM 2's video rule: an object judged absent (object score under 0.5) has no mask on that frame
    present = answer["object_score"] > 0.5
    np.testing.assert_array_equal(tracked[start].masks[0], answer["mask"] & present)
    with tracker.base_model():   # the adapter acts in the video tracker: without it, another answer
        base = tracker.segment(image, points=[[45, 35], [100, 80]], labels=[1, 0])
        base_tracked = list(tracker.track(frames, points=[[45, 35], [100, 80]], labels=[1, 0], frame=start))
    assert base["object_score"] != pytest.approx(answer["object_score"], abs=1e-4)
    assert base_tracked[start].scores[0] == pytest.approx(base["object_score"], abs=1e-6)


def test_without_trained_weights_the_sources_video_tracker_tracks_whole():
    """The bundled base with no adapter (``model.task: interactive``): ``track`` uses its video
    tracker as trained, mask decoder included, not the image tracker's (which differs)."""
    engine = SAM3LoRAInference(config=load_config("demo-interactive", []), no_lora=True)
    model, _ = video_tracker(engine)
    shipped = load_video_tracker("sam3-tiny-shapes").model.state_dict()
    tracked = model.state_dict()
    assert all(torch.equal(tracked[key], shipped[key]) for key in shipped)
    image = engine.model.state_dict()
    assert any(not torch.equal(tracked[key], value) for key, value in image.items() if key.startswith("mask_decoder."))


def test_a_video_runs_adapter_tracks_with_its_memory_adapter(frames, tmp_path):
    """``model.task: video``: the engine's own video tracker tracks, so an adapter trained on
    clips acts in the memory too (not only in the image modules it shares with ``segment``):
    frames after the prompted one differ from the base's, the prompted one (no memory read)
    does not."""
    from tests.training.tiny_video import save_tiny_video_tracker, tiny_video_tracker

    base = save_tiny_video_tracker(tmp_path / "base")
    with seeded(0):
        model = apply_lora_to_model(tiny_video_tracker(), LoRAConfig(
            rank=2, target_modules=["all"], apply_to_vision_encoder=False, apply_to_memory_attention=True),
            verbose=False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    save_adapter(model, tmp_path / "adapter", base_source=str(base))
    config = load_config(None, ["model.task=video", f"model.source={base}"])
    engine = SAM3LoRAInference(config=config, weights_path=tmp_path / "adapter")
    tuned = [frame.scores[0] for frame in engine.track(frames, points=[[45, 35]])]
    with engine.base_model():
        plain = [frame.scores[0] for frame in engine.track(frames, points=[[45, 35]])]
    assert tuned[0] == pytest.approx(plain[0], abs=1e-6)
    assert np.abs(np.subtract(tuned[1:], plain[1:])).max() > 1e-6, (tuned, plain)   # equal before the fix


def test_boxes_alone_are_one_object_each(tracker, frames):
    tracked = list(tracker.track(frames, boxes=[[25, 15, 65, 55], [70, 40, 110, 80]], frame=1))
    assert all(frame.object_ids.tolist() == [1, 2] for frame in tracked)


@pytest.mark.parametrize(("request_", "message"), [
    ({"points": [[200, 10]]}, "frame 0: points: every point must lie inside the 120x90 image"),
    ({"boxes": [[0, 0, 10, 200]]}, "frame 0: box: box .* is outside the 120x90 image"),
    ({"points": [[5, 5]], "frame": 6}, r"frame 6: the video has 6 frames; give a frame from 0 to 5"),
    ({"points": [[5, 5]], "frame": -1}, "frame -1: the video has 6 frames"),
    ({"prompts": ["red square"]}, "text prompts need SAM3's detector, and this model is a tracker"),
    ({}, "no object to track"),
    ({"points": [[5, 5]], "boxes": [[0, 0, 9, 9], [1, 1, 8, 8]]}, "at most one box"),
])
def test_bad_requests_are_one_line_before_anything_runs(tracker, frames, request_, message):
    with pytest.raises((PromptError, VideoInputError), match=message) as error:
        tracker.track(frames, **request_)   # raised at the call, not at the first frame
    assert "\n" not in str(error.value)


def test_concepts_are_tracked_with_identities_and_prompts(concept, tmp_path):
    clip = write_frames(tmp_path / "frames", frames=3)
    tracked = list(concept.track(clip, prompts=["red square", "blue"]))
    assert [frame.index for frame in tracked] == [0, 1, 2]
    first = tracked[0]
    assert len(first.object_ids) and set(first.prompts) <= {"red square", "blue"}
    assert len(set(first.object_ids.tolist())) == len(first.object_ids)
    assert first.masks.shape == (len(first.object_ids), SIZE[1], SIZE[0])
    for frame in tracked:   # within one prompt, no pixel belongs to two objects
        for prompt in set(frame.prompts):
            members = [m for m, p in zip(frame.masks, frame.prompts, strict=True) if p == prompt]
            assert np.sum(members, axis=0).max(initial=0) <= 1
    with pytest.raises(PromptError, match="need SAM3's tracker"):
        concept.track(clip, points=[[5, 5]])
    with pytest.raises(VideoInputError, match="frame 2: concepts are found on every frame"):
        concept.track(clip, prompts=["red square"], frame=2)


def test_the_feed_holds_only_the_last_frames(frames):
    from sam3_lora.model.processing import Sam3InputProcessor

    feed = FrameFeed(FrameFolder(frames), Sam3InputProcessor(None, 112), torch.float32, keep=2)
    assert len(feed) == FRAMES and feed[0].shape == (3, 112, 112)
    for index in range(FRAMES):
        feed[index]
        assert set(feed._images) <= {index - 1, index} and set(feed._pixels) <= {index - 1, index}


def test_a_folder_with_a_broken_or_odd_frame_is_one_line(tmp_path):
    folder = write_frames(tmp_path / "frames", frames=3)
    (folder / "00001.png").write_bytes(b"not a png")
    with pytest.raises(VideoInputError, match=r"cannot read frame .*00001.png") as error:
        list(FrameFolder(folder).frames())
    assert "\n" not in str(error.value)
    Image.new("RGB", (64, 64)).save(folder / "00001.png")
    with pytest.raises(VideoInputError, match=r"00001.png: 64x64, but the first frame is 120x90"):
        list(FrameFolder(folder).frames())
    with pytest.raises(VideoInputError, match="no frame images"):
        FrameFolder(tmp_path)
    with pytest.raises(VideoInputError, match="no such video file or folder"):
        open_video(tmp_path / "missing.mp4")


def test_a_video_file_is_read_frame_by_frame(tracker, frames, tmp_path):
    encoder = VideoEncoder(tmp_path / "clip.mp4", SIZE, 10.0)
    for picture in FrameFolder(frames).frames():
        encoder.write(picture)
    encoder.close()
    video = open_video(tmp_path / "clip.mp4")
    assert len(video) == FRAMES and video.size == SIZE and video.fps == pytest.approx(10.0)
    decoded = list(video.frames())
    assert len(decoded) == FRAMES and decoded[0].size == SIZE
    red = np.asarray(decoded[2])[35, 45]
    assert red[0] > 150 and red[1] < 90   # the square, through H.264
    assert len(list(tracker.track(tmp_path / "clip.mp4", points=[[45, 35]]))) == FRAMES
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoInputError, match="cannot read video .*bad.mp4"):
        open_video(tmp_path / "bad.mp4")


def test_without_pyav_a_video_file_names_the_fix_and_folders_still_work(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)   # import av raises ImportError
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(VideoInputError, match=r"needs PyAV, which is not installed: pip install 'sam3-lora\[video\]'"):
        open_video(tmp_path / "clip.mp4")
    with pytest.raises(VideoInputError, match="PyAV"):
        TrackWriter(tmp_path, FRAMES, 24.0, video=True)
    assert len(list(open_video(frames).frames())) == FRAMES


def test_the_writer_gives_youtube_vis_masklets_pngs_and_a_video(tracker, frames, tmp_path):
    tracked = list(tracker.track(frames, boxes=[[25, 15, 65, 55], [70, 40, 110, 80]]))
    writer = TrackWriter(tmp_path, FRAMES, 24.0, video=True, png=True)
    for frame in tracked:
        writer.add(frame)
    writer.close()
    masklets = json.loads((tmp_path / MASKLETS_FILE).read_text())
    shown = {obj for frame in tracked for obj, mask in zip(frame.object_ids, frame.masks, strict=True) if mask.any()}
    assert sorted(entry["object_id"] for entry in masklets) == sorted(shown)
    for entry in masklets:
        assert entry["video_id"] == 1 and entry["category_id"] == 1 and entry["prompt"] == "object"
        assert len(entry["segmentations"]) == FRAMES and 0 <= entry["score"] <= 1
        for frame, rle in zip(tracked, entry["segmentations"], strict=True):
            mask = frame.masks[frame.object_ids.tolist().index(entry["object_id"])]
            if rle is None:
                assert not mask.any()
            else:
                np.testing.assert_array_equal(decode(as_compressed(rle)).astype(bool), mask)
    ids = np.array(Image.open(tmp_path / "masks" / "00002.png"))
    assert Image.open(tmp_path / "masks" / "00002.png").mode == "P"
    np.testing.assert_array_equal(ids, np.asarray(index_mask(tracked[2])))
    assert (tmp_path / "overlays" / "00005.png").is_file()
    assert len(open_video(tmp_path / "overlay.mp4")) == FRAMES


def test_drawing_around_each_mask_equals_drawing_on_the_whole_frame():
    from sam3_lora.serve.overlay import draw_masks, prompt_color
    from sam3_lora.serve.video import TrackedFrame, draw_tracked

    image = Image.fromarray((np.random.RandomState(1).rand(40, 60, 3) * 255).astype(np.uint8))
    mask = np.zeros((40, 60), dtype=bool)
    mask[0:12, 20:59] = True   # touching the top border
    mask[5:30, 30:40] = True
    frame = TrackedFrame(0, "0", image, np.array([3]), ["object"], np.array([0.9]), mask[None])
    canvas = np.asarray(image, dtype=np.float32).copy()
    draw_masks(canvas, mask[None], prompt_color(3), 1)
    np.testing.assert_array_equal(np.asarray(draw_tracked(frame)), np.clip(canvas + 0.5, 0, 255).astype(np.uint8))


def test_frames_held_for_tracking_backwards_are_the_processors_rounded(frames):
    from sam3_lora.model.processing import Sam3InputProcessor
    from sam3_lora.serve.video import HeldFrames

    processor = Sam3InputProcessor(None, 112)
    held = HeldFrames(FrameFolder(frames), processor, torch.float32, last=3)
    assert len(held) == FRAMES and set(held._held) == {0, 1, 2}
    exact = processor.images([Image.open(frames / "00001.png").convert("RGB")])[0]
    assert (held[1] - exact).abs().max() <= 1 / 255 + 1e-6   # half a grey level, normalised to [-1, 1]
    assert torch.equal(held[3], processor.images([Image.open(frames / "00003.png").convert("RGB")])[0])
