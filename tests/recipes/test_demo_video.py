"""The video demo: the loop end to end on a tiny random 128-wide video tracker (what it writes,
in what ranges), the command's ``--task video``, and the learning test on the bundled base:
LoRA on its video tracker follows fast objects among look-alikes better (held-out J&F up by a
margin) and keeps its own domain.

The learning test needs a bundled base whose tracker runs on video (128 wide, with a memory
trained on clips); until it lands (the bundled tracker is 128 wide but an image tracker), the
test skips, saying so.
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.video.layout import load_video_split
from sam3_lora.errors import ModelLoadError
from sam3_lora.model.loading import BUNDLED
from sam3_lora.model.tracker import BUNDLED_TRACKER, VIDEO_TRACKER_MODEL_TYPE
from sam3_lora.model.video import load_video_tracker_config
from sam3_lora.recipes.demo import Budget, DemoError
from sam3_lora.recipes.demo_video import (
    BASE_DOMAIN,
    METRICS,
    SHOWN_FRAMES,
    STRIP_SCALE,
    run_video_demo,
)
from tests.training.tiny_video import save_tiny_video_tracker

SIZE = 56
FRAMES = 4
TINY_BUDGET = Budget(train_images=2, test_images=2, steps=2, replay_images=2)
TINY_CLIPS = {"image_size": SIZE, "frames": FRAMES}

# The goals: the target's J&F up by +0.2 (floor +0.10, held here), the base's own
# domain down by 0.02 at most. TODO(lead): measure the quick run on the bundled video base and
# put the figures beside these bounds (and loosen the drop's, as the interactive demo's, if 6
# own-domain test clips prove too few to hold 0.02).
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


def test_the_own_domain_is_the_base_domain_and_the_target_moves_faster(tiny_demo):
    """Both domains' clips are of the base's colours and shapes; the target's have two
    look-alikes of object 1 each (the own domain's one) and move faster (object 1's mask
    centroid, per frame)."""
    out = Path(tiny_demo[0]["output"])
    colors, shapes = set(BASE_DOMAIN["colors"]), set(BASE_DOMAIN["shapes"])
    for domain, look_alikes in (("target", 2), ("base-concepts", 1)):
        meta = json.loads((out / "data" / domain / "test" / "meta.json").read_text())["videos"]
        for entry in meta.values():
            assert len(entry["distractors"]) == look_alikes
            for obj in entry["objects"].values():
                color, shape = obj["category"].split()
                assert color in colors and shape in shapes
    assert mean_step(out / "data" / "target" / "test") > 2 * mean_step(out / "data" / "base-concepts" / "test")


def mean_step(split: Path) -> float:
    """Mean distance in pixels that object 1's mask centroid moves from one frame to the next."""
    steps = []
    for sequence in load_video_split(split).sequences:
        centers = [np.argwhere(mask == 1).mean(0) for mask in map(sequence.mask, range(len(sequence.frame_paths)))
                   if (mask == 1).any()]
        steps += [np.linalg.norm(b - a) for a, b in itertools.pairwise(centers)]
    return float(np.mean(steps))


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
    """Why the bundled base cannot run the learning test (None when it can): its tracker must
    run on video and hold a memory trained on clips (a video tracker's folder)."""
    try:
        load_video_tracker_config("sam3-tiny-shapes")
    except ModelLoadError as error:
        return f"the bundled base's tracker cannot run on video yet ({error})"
    folder = Path(BUNDLED["sam3-tiny-shapes"]) / BUNDLED_TRACKER
    if json.loads((folder / "config.json").read_text()).get("model_type") != VIDEO_TRACKER_MODEL_TYPE:
        return "the bundled base's tracker has no video memory yet (a random one has nothing to learn from)"
    return None


@pytest.mark.skipif(_bundled_base_tracks_video() is not None, reason=str(_bundled_base_tracks_video()))
def test_lora_follows_fast_objects_among_look_alikes_and_keeps_the_own_domain(tmp_path):
    """The quick demo on the bundled base (sam3-tiny-shapes' video tracker), seed 0: the
    target's held-out J&F gains at least ``MIN_TARGET_JF_GAIN``, the own domain's drops at most
    ``MAX_OWN_DOMAIN_JF_DROP``. With training.learning_rate=0 every change is 0, so it fails."""
    summary = run_video_demo(tmp_path / "out", quick=True)
    base, tuned, own = summary["base"], summary["finetuned"], summary["base_concepts"]
    assert tuned["J&F"] - base["J&F"] >= MIN_TARGET_JF_GAIN, (base, tuned)
    assert own["base"]["J&F"] - own["finetuned"]["J&F"] <= MAX_OWN_DOMAIN_JF_DROP, own
