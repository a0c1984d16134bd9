"""``sam3-lora predict``: every input and output is checked before the model loads."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import sam3_lora.serve.inference
from sam3_lora.cli import main
from sam3_lora.serve.prompts import ImagePredictor


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the refusals below must come before it."""
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(sam3_lora.serve.inference, "SAM3LoRAInference", loaded)


@pytest.fixture
def photos(tmp_path):
    """A folder of two images."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 24), "red").save(folder / name)
    return folder


def predict(capsys, *argv) -> tuple[int, str]:
    code = main(["predict", "--config", "demo", "model.source=sam3-tiny", "--prompt", "red circle",
                 *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["nan", "5", "-0.1", "inf"])
def test_threshold_outside_0_1_is_refused(no_model, photos, tmp_path, capsys, threshold):
    code, err = predict(capsys, "--image", str(photos), "--threshold", threshold,
                        "--output", str(tmp_path / "out"))
    assert code == 2 and err == (f"error: threshold {float(threshold)}: must be a number between "
                                 "0 and 1 (--threshold)\n")


def test_a_file_name_for_a_folder_of_images_is_refused(no_model, photos, tmp_path, capsys):
    """It used to make a folder named one.png, silently."""
    code, err = predict(capsys, "--image", str(photos), "--output", str(tmp_path / "one.png"))
    assert code == 2 and err.count("\n") == 1
    assert "one.png: a file name, but there are 2 images; give a folder (--output)" in err
    assert not (tmp_path / "one.png").exists()


def test_one_image_needs_a_png_or_a_folder(no_model, photos, tmp_path, capsys):
    code, err = predict(capsys, "--image", str(photos / "a.png"), "--output", str(tmp_path / "a.jpg"))
    assert code == 2 and "a.jpg: overlays are written as PNG; give a .png path or a folder (--output)" in err


@pytest.mark.parametrize("where", ["folder", "file"])
def test_unwritable_outputs_are_refused_before_the_model_loads(no_model, photos, tmp_path, capsys,
                                                               monkeypatch, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests run as root, who may write anywhere: a read-only folder is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked)
                        else real_access(path, mode))
    image = str(photos) if where == "folder" else str(photos / "a.png")
    output = locked / "out" if where == "folder" else locked / "out.png"
    code, err = predict(capsys, "--image", image, "--output", str(output))
    assert code == 2 and err.count("\n") == 1 and f"{locked} is not writable" in err


def test_outputs_under_a_file_or_on_a_folder_are_refused(no_model, photos, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    code, err = predict(capsys, "--image", str(photos), "--output", str(tmp_path / "plain" / "out"))
    assert code == 2 and "is a file, so nothing can be written under it" in err
    (tmp_path / "taken.png").mkdir()
    code, err = predict(capsys, "--image", str(photos / "a.png"), "--output", str(tmp_path / "taken.png"))
    assert code == 2 and "taken.png: is a folder; give a file path" in err


class FakeEngine(ImagePredictor):
    """Answers every prompt with one detection, a box over the image's top-left quarter;
    no model."""

    def __init__(self, *args, detection_threshold: float = 0.5, **kwargs):
        self.threshold = detection_threshold

    def predict_batch(self, images, prompts=None, boxes=None, negative_boxes=None, *, threshold=None,
                      max_detections=None):
        request = self._checked_request(images, prompts, boxes, negative_boxes, threshold)
        answers = []
        for picture in request.pictures:
            width, height = picture.size
            mask = np.zeros((1, height, width), bool)
            mask[0, : height // 2, : width // 2] = True
            answers.append([{"prompt": name, "num_detections": 1, "scores": np.array([0.9]),
                             "boxes": np.array([[0, 0, width / 2, height / 2]]), "masks": mask}
                            for name in request.names])
        self._last_image = request.pictures[-1]
        return answers


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(sam3_lora.serve.inference, "SAM3LoRAInference", FakeEngine)


def test_outputs_replace_symlinks_at_their_names_instead_of_writing_through(fake_model, photos, tmp_path,
                                                                           capsys):
    """Links planted at NAME.png and NAME.json used to have the overlay and the JSON written
    into their targets."""
    out = tmp_path / "out"
    out.mkdir()
    targets = {name: tmp_path / f"target-{name}" for name in ("a.png", "a.json")}
    for name, target in targets.items():
        target.write_text("keep me")
        (out / name).symlink_to(target)
    code, err = predict(capsys, "--image", str(photos), "--output", str(out))
    assert code == 0, err
    assert all(target.read_text() == "keep me" for target in targets.values())
    assert not (out / "a.png").is_symlink() and Image.open(out / "a.png").format == "PNG"
    assert not (out / "a.json").is_symlink() and json.loads((out / "a.json").read_text())[0]["score"] == 0.9


@pytest.fixture
def with_broken(photos):
    """The two images, and a PNG that is not one (first in order, so it is met first)."""
    (photos / "0-broken.png").write_bytes(b"not an image")
    return photos


def test_unreadable_images_are_skipped_and_counted(fake_model, with_broken, tmp_path, capsys):
    """predict used to stop at the first unreadable image, with advice about an annotation
    file predict does not have."""
    code, err = predict(capsys, "--image", str(with_broken), "--output", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    [line] = [line for line in err.splitlines() if "skipped" in line]
    assert line.startswith(f"warning: skipped 1 unreadable image: first: {with_broken / '0-broken.png'} (")
    assert "annotation" not in err
    entries = json.loads((tmp_path / "out" / "a.json").read_text())
    assert {e["image_id"] for e in entries} == {1}   # ids stay the images' places in the listing


def test_strict_stops_at_the_first_unreadable_image(fake_model, with_broken, tmp_path, capsys):
    code, err = predict(capsys, "--image", str(with_broken), "--output", str(tmp_path / "out"), "--strict")
    assert code == 2 and "annotation" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert f"cannot read image {with_broken / '0-broken.png'}: " in line and "leave strict off to skip such images (--strict)" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_no_readable_image_is_an_error(fake_model, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, err = predict(capsys, "--image", str(tmp_path / "bad.png"), "--output", str(tmp_path / "out.png"))
    assert code == 2 and err.count("\n") == 1 and "no image could be read" in err and "annotation" not in err


def test_points_segment_one_object_with_the_tracker(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--config", "demo", "model.source=sam3-tiny", "model.task=interactive", "--no-lora",
                 "--image", str(photos / "a.png"), "--points", "10,10", "20,5,0", "--output", str(out) + "/"])
    assert code == 0, capsys.readouterr().err
    entries = json.loads((out / "a.json").read_text())
    assert len(entries) == 1 and entries[0]["prompt"] == "object" and entries[0]["segmentation"]["size"] == [24, 32]
    assert (out / "a.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--points", "10,x"], "'10,x' is not X,Y or X,Y,LABEL"),
    (["--points", "10,10,2"], "is not X,Y or X,Y,LABEL"),
    (["--points", "10,10"], "--points needs SAM3's tracker"),   # the demo config is the concept model
])
def test_bad_points_are_refused_before_the_model_loads(no_model, photos, capsys, argv, message):
    code = main(["predict", "--config", "demo", "model.source=sam3-tiny", "--image", str(photos), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_task_names_a_dataset_of_the_config_before_the_model_loads(photos, tmp_path, capsys):
    """--task chooses a dataset's adapters (lora.task_adapters): one of data.datasets, else one line."""
    datasets = "data.datasets=[{name: cracks, root: a}, {name: rust, root: b}]"
    code, err = predict(capsys, "--image", str(photos), "--output", str(tmp_path / "out"), "data.root=data", datasets,
                        "--task", "nope")
    assert code == 2 and err == "error: task 'nope': not a dataset of data.datasets (cracks, rust); name one of them\n"
    code, err = predict(capsys, "--image", str(photos), "--output", str(tmp_path / "out"), "--onnx", str(tmp_path),
                        "--task", "rust")
    assert code == 2 and "--config does not apply with --onnx" in err
