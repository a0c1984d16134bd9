"""The video demo: the loop end to end on a tiny random 128-wide video tracker (what it writes,
in what ranges), the command's ``--task video``, and the learning test on the bundled base:
LoRA on its video tracker follows objects of a new look better (held-out J&F up by a margin)
and keeps its own domain.

The learning test needs the bundled base's video tracker (``video-tracker/``: a memory trained
on clips); without it the test skips, saying so.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.errors import ModelLoadError
from sam3_lora.model.loading import BUNDLED
from sam3_lora.model.video import BUNDLED_VIDEO_TRACKER
from sam3_lora.recipes.demo import Budget, DemoError
from sam3_lora.recipes.demo_video import (
    BASE_DOMAIN,
    METRICS,
    SHOWN_FRAMES,
    STRIP_SCALE,
    TARGET,
    run_video_demo,
)
from tests.training.tiny_video import save_tiny_video_tracker

SIZE = 56
FRAMES = 4
TINY_BUDGET = Budget(train_images=2, test_images=2, steps=2, replay_images=2)
TINY_CLIPS = {"image_size": SIZE, "frames": FRAMES}

# The goals: the target's J&F up by +0.2 (floor +0.10, held here), the base's own
# domain down by 0.02 at most. Measured on the quick run (seed 0, 2026-12-07): target J&F
# 0.195 -> 0.362 (+0.166), own domain 0.439 -> 0.451 (+0.011: replaying it trains its memory
# further).
MIN_TARGET_JF_GAIN = 0.10
MAX_OWN_DOMAIN_JF_DROP = 0.02


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The demo on 2 target and 2 replayed clips of 4 frames at 56 px, 2 steps, with a random
    width-128 video tracker (``tests.training.tiny_video``) as its base; the printed lines."""
    root = tmp_path_factory.mktemp("demo-video")
    tracker = save_tiny_video_tracker(root / "tracker", SIZE)
    lines = []
    summary = run_video_demo(root / "out", budget=TINY_BUDGET, clip_style=TINY_CLIPS, say=lines.append,
                             overrides=[f"model.source={tracker}", "data.clip_frames=3", "training.batch_size=1"])
    return summary, lines


def test_demo_writes_summary_scores_and_a_frame_strip(tiny_demo):
    summary, lines = tiny_demo
    out = Path(summary["output"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["task"] == "video" and saved["quick"] is False
    assert saved["train_steps"] == TINY_BUDGET.steps and saved["seconds"] > 0
    for section in (saved["base"], saved["finetuned"], saved["base_concepts"]["base"],
                    saved["base_concepts"]["finetuned"]):
        assert set(section) == set(METRICS) and all(0.0 <= section[m] <= 1.0 for m in METRICS)
        assert section["J&F"] == pytest.approx((section["J"] + section["F"]) / 2)
    for folder, scored in (("target", saved), ("base-concepts", saved["base_concepts"])):
        written = json.loads((out / "eval" / folder / "metrics.json").read_text())   # what validate wrote
        tuned = scored["finetuned"]
        assert (written["J&F"], written["base"]["J&F"]) == (tuned["J&F"], scored["base"]["J&F"])
        assert written["sequences"] == TINY_BUDGET.test_images
    for domain in ("target", "base-concepts"):
        assert sorted(p.name for p in (out / "data" / domain).iterdir()) == ["test", "train", "valid"]
    assert (out / "run" / "best" / "adapter_model.safetensors").is_file()
    assert "| J&F |" in (out / "eval" / "target" / "report.md").read_text()
    strip = np.asarray(Image.open(summary["strip"]))
    shown = min(SHOWN_FRAMES, FRAMES)
    assert strip.shape[:2] == (3 * (16 + SIZE * STRIP_SCALE), shown * SIZE * STRIP_SCALE)   # truth, base, tuned
    table = lines[-1].splitlines()
    assert table[0].split() == ["base", "fine-tuned", "change"]
    assert table[3].split()[:4] == ["target", "J&F", f"{saved['base']['J&F']:.3f}", f"{saved['finetuned']['J&F']:.3f}"]


def test_the_own_domain_is_the_base_domain_and_the_target_looks_new(tiny_demo):
    """The own domain's clips are of the base's colours and shapes; the target's of the
    target's only, none of which the base saw, on its checker background; both have one
    look-alike of object 1."""
    out = Path(tiny_demo[0]["output"])
    for domain, spec in (("target", TARGET), ("base-concepts", BASE_DOMAIN)):
        meta = json.loads((out / "data" / domain / "test" / "meta.json").read_text())["videos"]
        for entry in meta.values():
            assert len(entry["distractors"]) == 1
            for obj in entry["objects"].values():
                color, shape = obj["category"].split()
                assert color in spec["colors"] and shape in spec["shapes"]
    assert not set(TARGET["colors"]) & set(BASE_DOMAIN["colors"])
    assert not set(TARGET["shapes"]) & set(BASE_DOMAIN["shapes"])


def test_the_command_takes_the_task_and_never_overwrites_unasked(tmp_path):
    """``--task video`` writes to runs/demo-video unless told otherwise; an earlier demo there
    is refused in one line without --overwrite, and a folder that is not a demo's always; a
    base whose tracker cannot run on video is refused in one line before any clip is made."""
    earlier = tmp_path / "runs" / "demo-video"
    (earlier / "run").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "demo", "--task", "video", "--quick"],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "runs/demo-video: an earlier demo is there; replace it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(ModelLoadError, match="its tracker is 32 wide") as error:
        run_video_demo(tmp_path / "narrow", overrides=["model.source=sam3-tiny"])
    assert "\n" not in str(error.value) and not any((tmp_path / "narrow").iterdir())   # before any clip is made
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo's"):
        run_video_demo(tmp_path / "mine", quick=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _bundled_base_tracks_video() -> str | None:
    """Why the bundled base cannot run the learning test (None when it can): it must hold a
    video tracker whose memory was trained on clips (``video-tracker/``)."""
    if not (Path(BUNDLED["sam3-tiny-shapes"]) / BUNDLED_VIDEO_TRACKER / "model.safetensors").is_file():
        return "the bundled base has no video tracker yet (a random memory has nothing to learn from)"
    return None


@pytest.mark.skipif(_bundled_base_tracks_video() is not None, reason=str(_bundled_base_tracks_video()))
def test_lora_follows_new_looking_objects_and_keeps_the_own_domain(tmp_path):
    """The quick demo on the bundled base (sam3-tiny-shapes' video tracker), seed 0: the
    target's held-out J&F gains at least ``MIN_TARGET_JF_GAIN``, the own domain's drops at most
    ``MAX_OWN_DOMAIN_JF_DROP``. With training.learning_rate=0 every change is 0, so it fails."""
    summary = run_video_demo(tmp_path / "out", quick=True)
    base, tuned, own = summary["base"], summary["finetuned"], summary["base_concepts"]
    assert tuned["J&F"] - base["J&F"] >= MIN_TARGET_JF_GAIN, (base, tuned)
    assert own["base"]["J&F"] - own["finetuned"]["J&F"] <= MAX_OWN_DOMAIN_JF_DROP, own
