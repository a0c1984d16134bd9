"""``validate`` with model.task=video: DAVIS's semi-supervised protocol (J, F, J&F) on a video split."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora.config import load_config
from sam3_lora.data.video.layout import load_video_split, read_meta
from sam3_lora.data.video.synth import synthesize_video
from sam3_lora.errors import Sam3LoraError, Sam3LoraWarning
from sam3_lora.evaluation.video import region_similarity
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.video import load_video_tracker
from sam3_lora.recipes.validate import validate
from sam3_lora.recipes.validate_video import score_sequences, tracker
from tests.conftest import TINY_CONFIG
from tests.training.tiny_video import save_tiny_video_tracker

SIZE = 56
MEASURES = ("J&F", "J", "F", "J_recall", "F_recall")
DECAYS = ("J_decay", "F_decay")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """`sam3-lora data synth --video`: 2 valid sequences of 5 frames at 56 px, two objects
    each (one of them hidden on a frame), with meta.json's categories; a tiny width-128 video
    tracker; and two adapters on it: LoRA as PEFT starts it (B = 0) and one with B random."""
    root = tmp_path_factory.mktemp("video")
    synthesize_video(root / "data", sequences_per_split={"train": 1, "valid": 2}, frames=5, image_size=SIZE,
                     objects_per_clip=(2, 2), seed=0)
    tracker = save_tiny_video_tracker(root / "tracker", SIZE)
    lora = config_for(root / "data", tracker, root / "run").lora
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        adapted = apply_lora_to_model(load_video_tracker(str(tracker)).model, lora, verbose=False)
    save_adapter(adapted, root / "zero", base_source=str(tracker))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    save_adapter(adapted, root / "random", base_source=str(tracker))
    return root


def config_for(data, tracker, run_dir, *overrides):
    return load_config(TINY_CONFIG, [
        f"data.root={data}", f"output.dir={run_dir}", "model.task=video", f"model.source={tracker}",
        "lora.apply_to_detr_encoder=false", "lora.apply_to_detr_decoder=false",
        "lora.apply_to_memory_attention=true", "lora.apply_to_memory_encoder=true", *overrides])


def run(clips, tmp_path, *overrides):
    return config_for(clips / "data", clips / "tracker", tmp_path / "run", *overrides)


def assert_davis_measures(metrics):
    for key in MEASURES:
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in DECAYS:
        assert -1.0 <= metrics[key] <= 1.0, key
    assert metrics["J&F"] == pytest.approx((metrics["J"] + metrics["F"]) / 2)


def test_validate_scores_the_video_tracker_by_j_and_f(clips, tmp_path):
    """Before, model.task=video went down the detector's path: 'annotation file not found'."""
    summary = validate(run(clips, tmp_path), no_lora=True, output=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    split = load_video_split(clips / "data" / "valid")
    assert summary["output"] == str(tmp_path / "eval") and written["weights"] == "base model"
    assert written["sequences"] == 2 and written["objects"] == sum(len(s.objects) for s in split.sequences) == 4
    assert_davis_measures(written)
    assert set(written["per_sequence"]) == {s.name for s in split.sequences}
    categories = {c for objects in read_meta(clips / "data" / "valid").values() for c in objects.values()}
    assert set(written["per_category"]) == categories and len(written["per_object"]) == 4
    for metrics in [*written["per_sequence"].values(), *written["per_category"].values()]:
        assert_davis_measures(metrics)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| J&F |" in report and "![J&F per sequence](jf_by_sequence.png)" in report
    assert (tmp_path / "eval" / "jf_by_sequence.png").is_file()


def every_frame_truth(sequence):
    """(O, T, H, W): the sequence's objects on every frame, from its masks."""
    ids = np.array(list(sequence.objects))
    return np.stack([sequence.mask(t)[None] == ids[:, None, None] for t in range(len(sequence.frame_paths))], 1)


def test_the_ground_truth_as_prediction_scores_one(clips):
    """The scoring the recipe uses, from a tracker's (O, T, H, W) masks to J and F: the ground
    truth scores 1 (decay 0); the ground truth one frame late scores less."""
    split = load_video_split(clips / "data" / "valid")
    categories = read_meta(clips / "data" / "valid")
    perfect = score_sequences(split.sequences, every_frame_truth, categories)
    for metrics in [perfect, *perfect["per_sequence"].values(), *perfect["per_category"].values()]:
        assert metrics["J"] == metrics["F"] == metrics["J&F"] == metrics["J_recall"] == 1.0
        assert metrics["J_decay"] == metrics["F_decay"] == 0.0
    late = score_sequences(split.sequences, lambda s: np.roll(every_frame_truth(s), 1, axis=1), categories)
    assert late["J"] < 0.95 and late["F"] < 0.95


def test_an_object_appearing_later_is_prompted_on_its_first_frame(clips, tmp_path):
    """Object 2 wiped from frames 0 and 1: predicted absent there (no tracker sees its mask
    before frame 2), its prompt as its mask on frame 2; object 1 its prompt on frame 0."""
    shutil.copytree(clips / "data" / "valid", tmp_path / "valid")
    sequence = load_video_split(tmp_path / "valid").sequences[0]
    for frame in (0, 1):
        path = sequence.mask_paths[sequence.frame_names[frame]]
        with Image.open(path) as image:
            ids, palette = np.array(image), image.getpalette()
        ids[ids == 2] = 0
        wiped = Image.fromarray(ids)
        wiped.putpalette(palette)
        wiped.save(path)
    sequence = load_video_split(tmp_path / "valid").sequences[0]
    assert {k: v[0] for k, v in sequence.objects.items()} == {1: 0, 2: 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Sam3LoraWarning)
        loaded = load_video_tracker(str(clips / "tracker"))
    masks = tracker(loaded.model, loaded.processor)(sequence)
    truth = every_frame_truth(sequence)
    assert masks.shape == truth.shape and not masks[1, :2].any()
    assert region_similarity(truth[1, 2], masks[1, 2]) > 0.9 and region_similarity(truth[0, 0], masks[0, 0]) > 0.8
    assert not (masks[0] & masks[1]).any()   # one object a pixel, as DAVIS's index masks


def test_compare_base_equals_a_zero_adapter_and_differs_from_a_trained_one(clips, tmp_path):
    config = run(clips, tmp_path)
    zero = validate(config, weights=clips / "zero", compare_base=True, output=tmp_path / "zero")
    assert zero["weights"].endswith("zero") and set(MEASURES) <= set(zero["base"])
    for key in (*MEASURES, *DECAYS):
        assert zero["base"][key] == zero[key], key
    assert zero["base"]["per_object"] == zero["per_object"]
    changed = validate(config, weights=clips / "random", compare_base=True, output=tmp_path / "random")
    assert changed["base"]["per_object"] == zero["per_object"]   # the base is the base, adapter or not
    assert changed["per_object"] != changed["base"]["per_object"]
    report = (tmp_path / "random" / "report.md").read_text()
    assert "| Metric | Base | Fine-tuned | Δ |" in report and "| J&F |" in report


def test_a_rerun_replaces_the_earlier_results_whole(clips, tmp_path):
    """An earlier validation's folder (a base column, a detector's predictions and figure)
    is replaced, not written into; a folder holding anything else is refused in one line."""
    config = run(clips, tmp_path)
    out = tmp_path / "eval"
    validate(config, weights=clips / "random", compare_base=True, output=out)
    (out / "predictions.json").write_text("[]")
    (out / "pr_curves.png").write_bytes(b"")
    validate(config, no_lora=True, output=out)
    assert sorted(p.name for p in out.iterdir()) == ["jf_by_sequence.png", "metrics.json", "report.md"]
    assert "base" not in json.loads((out / "metrics.json").read_text())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(Sam3LoraError, match="notes.txt") as error:
        validate(config, no_lora=True, output=mine)
    assert "\n" not in str(error.value) and (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("split", "make", "message"), [
    ("test", None, "no test/ split to evaluate"),
    ("valid", "coco", "no JPEGImages/ folder"),
    ("valid", "short", "no sequence has 3 annotated frames"),
])
def test_a_bad_split_is_one_line(clips, tmp_path, split, make, message):
    data = clips / "data"
    if make == "coco":   # an image split given to the video task
        data = tmp_path / "coco"
        (data / "valid").mkdir(parents=True)
        (data / "valid" / "_annotations.coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    elif make == "short":
        data = tmp_path / "short"
        synthesize_video(data, sequences_per_split={"valid": 1}, frames=2, image_size=SIZE, seed=0)
    with pytest.raises(Sam3LoraError, match=message) as error:
        validate(config_for(data, clips / "tracker", tmp_path / "run"), no_lora=True, split=split,
                 output=tmp_path / "eval")
    assert "\n" not in str(error.value) and not (tmp_path / "eval").exists()


def test_the_command_prints_j_and_f(clips, tmp_path, capsys):
    from sam3_lora.cli import main

    code = main(["validate", "--config", str(TINY_CONFIG), f"data.root={clips / 'data'}",
                 f"output.dir={tmp_path / 'run'}", "model.task=video", f"model.source={clips / 'tracker'}",
                 "--no-lora", "--num-samples", "1"])
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "run" / "eval-valid" / "metrics.json").read_text())
    assert code == 0 and written["sequences"] == 1
    assert "J&F" in out.splitlines()[0] and f"{written['J&F']:.3f}" in out.splitlines()[1]
    assert "2 objects in 1 sequences" in out
