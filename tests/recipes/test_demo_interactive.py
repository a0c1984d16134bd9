"""The interactive demo and its learning test: LoRA on the bundled tracker learns to segment
shapes it never saw from clicks (held-out mIoU_1 and box_mIoU up by measured margins, no
more clicks needed) and keeps its own shapes.

Measured with the quick budget (seed 0): the figures beside the floors below, and
BENCHMARKS.md "The interactive demo". With
training.learning_rate=0 every change is 0, so the learning test fails, as it must.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.recipes.demo import DemoError
from sam3_lora.recipes.demo_interactive import METRICS, SHOWN_CLICKS, run_interactive_demo

# The goals, tested on the quick run: mIoU_1 +0.2, NoC_85 2 clicks fewer (measured
# +0.705 and -11.7, seed 0, on the bundled tracker with its second stage; +0.763 and -14.2
# before it). The base shapes' drop is measured on 8 images (about 19 objects) here, so its
# bound is looser than the issue's 0.02, which the full demo is held to (BENCHMARKS.md, "The
# interactive demo": -0.017).
MIN_TARGET_MIOU1_GAIN = 0.2
MIN_TARGET_BOX_GAIN = 0.2            # measured +0.732
MIN_TARGET_NOC85_DROP = 2.0
MAX_BASE_SHAPES_MIOU1_DROP = 0.06    # measured 0.053 (before the second stage: 0.027)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-interactive") / "out"
    return run_interactive_demo(out, quick=True, say=lambda *_: None)


def test_lora_learns_the_target_shapes_from_clicks_and_keeps_the_base_shapes(quick_demo):
    base, tuned = quick_demo["base"], quick_demo["finetuned"]
    assert tuned["mIoU_1"] - base["mIoU_1"] >= MIN_TARGET_MIOU1_GAIN, (base, tuned)
    assert tuned["box_mIoU"] - base["box_mIoU"] >= MIN_TARGET_BOX_GAIN, (base, tuned)
    assert base["NoC_85"] - tuned["NoC_85"] >= MIN_TARGET_NOC85_DROP, (base, tuned)
    shapes = quick_demo["base_concepts"]
    assert shapes["base"]["mIoU_1"] - shapes["finetuned"]["mIoU_1"] <= MAX_BASE_SHAPES_MIOU1_DROP, shapes


def test_demo_writes_summary_report_and_click_sequences(quick_demo):
    out = Path(quick_demo["output"])
    saved = json.loads((out / "summary.json").read_text())
    for section in (saved["base"], saved["finetuned"], saved["base_concepts"]["base"],
                    saved["base_concepts"]["finetuned"]):
        assert set(METRICS) <= set(section) and all(isinstance(section[m], float) for m in METRICS)
    assert saved["task"] == "interactive" and saved["finetuned"] == quick_demo["finetuned"]
    report = Path(quick_demo["report"]).read_text()
    assert "base mIoU_1" in report and "![IoU by clicks](iou_by_clicks.png)" in report
    assert len(quick_demo["overlays"]) == 3
    panel = np.asarray(Image.open(quick_demo["overlays"][0]))
    assert panel.shape[:2] == (2 * (16 + 336), SHOWN_CLICKS * 336)   # base above fine-tuned, a click a column


def test_the_command_takes_the_task_and_never_overwrites_unasked(tmp_path):
    earlier = tmp_path / "earlier"
    (earlier / "run").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "demo", "--task", "interactive", "--output",
                             str(earlier)], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "an earlier demo is there; replace it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(DemoError, match="not a demo's"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        run_interactive_demo(tmp_path / "mine", quick=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
