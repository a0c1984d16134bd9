"""``sam3-lora track``: every input and output is checked before the model loads; results go
into a new folder, written at once."""

import json
import os
import warnings

import pytest

import sam3_lora.serve.inference
from sam3_lora.cli import main
from sam3_lora.errors import Sam3LoraWarning
from tests.model.test_video import write_detector_folder, write_tracker_folder
from tests.serve.test_video import write_frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"tracker": write_tracker_folder(root / "tracker"), "detector": write_detector_folder(root / "detector")}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("clip") / "frames", frames=4)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the refusals below must come before it."""
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(sam3_lora.serve.inference, "SAM3LoRAInference", loaded)


def track(capsys, models, *argv, task="interactive") -> tuple[int, str]:
    source = models["tracker" if task == "interactive" else "detector"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        code = main(["track", "--config", "demo", f"model.source={source}", f"model.task={task}", *argv])
    return code, capsys.readouterr().err


def test_clicks_give_a_video_masklets_and_pngs(models, clip, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = track(capsys, models, "--no-lora", "--video", str(clip), "--points", "45,35", "100,80,0",
                      "--frame", "2", "--png", "--output", str(out))
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["masklets.json", "masks", "overlay.mp4", "overlays"]
    masklets = json.loads((out / "masklets.json").read_text())
    assert [entry["object_id"] for entry in masklets] in ([1], [])
    assert len(os.listdir(out / "masks")) == len(os.listdir(out / "overlays")) == 4
    assert "frame/s" in err   # the progress bar counts frames


def test_tracker_width_builds_a_video_capable_tracker_on_a_narrow_preset(clip, tmp_path, capsys):
    """sam3-tiny's own tracker (32 wide) is refused for video; model.tracker_width=128 builds
    one that runs, on its ViT."""
    argv = ["track", "--config", "demo", "model.source=sam3-tiny", "model.task=interactive", "--no-lora",
            "--video", str(clip), "--points", "45,35", "--no-video"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        assert main([*argv, "--output", str(tmp_path / "narrow")]) == 2
        assert "32 wide" in capsys.readouterr().err
        code = main([*argv, "model.tracker_width=128", "--output", str(tmp_path / "wide")])
    assert code == 0, capsys.readouterr().err
    assert len(json.loads((tmp_path / "wide" / "masklets.json").read_text())) <= 1


def test_concepts_run_from_the_command_line(models, clip, tmp_path, capsys):
    code, err = track(capsys, models, "--no-lora", "--video", str(clip), "--prompt", "red square", "--no-video",
                      "--output", str(tmp_path / "out"), task="concept")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["masklets.json"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--video", "{missing}", "--points", "5,5"], "{missing}: no such video file or folder of frames (--video)"),
    (["--points", "500,5"], "frame 0: points: every point must lie inside the 120x90 image"),
    (["--points", "5,5", "--frame", "4"], "frame 4: the video has 4 frames; give a frame from 0 to 3 (--frame)"),
    (["--prompt", "red square"], ("text prompts need SAM3's detector, and this model is a tracker "
                                  "(model.task=interactive); give points or boxes")),
    (["--points", "5"], "point '5' is not X,Y or X,Y,LABEL"),
    (["--bboxes", "[[1, 2"], "--bboxes '[[1, 2': not JSON"),
])
def test_bad_inputs_are_one_line_before_the_model_loads(no_model, models, clip, tmp_path, capsys, argv, message):
    missing = str(tmp_path / "none.mp4")
    argv = [item.format(missing=missing) for item in argv]
    if "--video" not in argv:
        argv = ["--video", str(clip), *argv]
    code, err = track(capsys, models, *argv, "--output", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and message.format(missing=missing) in err, err
    assert not (tmp_path / "out").exists()


def test_a_concept_prompt_on_a_tracker_only_source_is_refused(no_model, models, clip, tmp_path, capsys):
    code, err = track(capsys, models, "--video", str(clip), "--points", "5,5", "--output", str(tmp_path / "o"),
                      task="concept")
    assert code == 2 and "points and boxes of single objects need SAM3's tracker" in err


def test_a_narrow_tracker_is_refused_before_it_loads(no_model, clip, tmp_path, capsys):
    code = main(["track", "--config", "base-tracker", "model.source=sam3-tiny", "model.tracker_width=null",
                 "--video", str(clip), "--points", "5,5", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "its tracker is 32 wide" in err and err.count("\n") == 1


def test_an_earlier_runs_folder_is_never_mixed_into(no_model, models, clip, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "masklets.json").write_text("[]")
    code, err = track(capsys, models, "--video", str(clip), "--points", "5,5", "--output", str(out))
    assert code == 2 and "folder is not empty; choose an empty or new output folder" in err
    assert (out / "masklets.json").read_text() == "[]"


def test_a_link_as_output_is_replaced_never_written_through(models, clip, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    code, err = track(capsys, models, "--no-lora", "--video", str(clip), "--points", "5,5", "--no-video",
                      "--output", str(tmp_path / "out"))
    assert code == 0, err
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "masklets.json").is_file()
    assert os.listdir(target) == []


def test_an_adapter_of_the_other_task_is_one_line(models, clip, tmp_path, capsys):
    """Checked before the model loads; the loading's own check said to load another base."""
    from sam3_lora.config import LoRAConfig
    from sam3_lora.lora.adapter import save_adapter
    from sam3_lora.lora.apply import apply_lora_to_model
    from sam3_lora.model.loading import load_sam3

    detector = apply_lora_to_model(load_sam3(str(models["detector"])).model, LoRAConfig(rank=2), verbose=False)
    save_adapter(detector, tmp_path / "concept-adapter")
    capsys.readouterr()   # the loading's progress bars
    code, err = track(capsys, models, "--weights", str(tmp_path / "concept-adapter"), "--video", str(clip),
                      "--points", "5,5", "--output", str(tmp_path / "out"))
    assert code == 2 and err == (f"error: {tmp_path / 'concept-adapter'}: a detector's adapter (trained with "
                                 f"model.task=concept) cannot follow clicks; track with it from text prompts and a "
                                 f"config with model.task=concept (--weights)\n")
    code, err = track(capsys, models, "--weights", str(tmp_path / "concept-adapter"), "--video", str(clip),
                      "--prompt", "red square", "--no-video", "--output", str(tmp_path / "out"), task="concept")
    assert code == 0, err   # the same adapter on the detector tracks concepts
    assert os.listdir(tmp_path / "out") == ["masklets.json"]
