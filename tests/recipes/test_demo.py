"""The demo and its learning test: LoRA on the bundled base learns a domain it never saw
(held-out mAP up by a measured margin) and keeps the base's own concepts.

Measured with the quick budget (seed 0, 2 threads, BENCHMARKS.md "The demo"): target mAP
0.017 -> 0.292 (+0.275), mAP@50 +0.421, cgF1 +0.191, presence ROC-AUC +0.302; base-concept
mAP 0.454 -> 0.456. The floors below leave head-room under those. With
``training.learning_rate=0`` every change is 0.000, so the learning test fails, as it must
(checked by hand; BENCHMARKS.md).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam3_lora.recipes.demo import DemoError, run_demo

MIN_TARGET_GAIN = 0.15        # absolute target mAP gain the quick demo must show (measured +0.275)
MIN_TARGET_CGF1_GAIN = 0.1    # measured +0.191
MIN_PRESENCE_AUC_GAIN = 0.15  # measured +0.302
MAX_BASE_CONCEPT_DROP = 0.03  # absolute base-concept mAP it may lose (measured: +0.002, a gain)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(out, quick=True, say=lambda *_: None)


def test_lora_learns_the_target_domain_and_keeps_the_base_concepts(quick_demo):
    base, tuned = quick_demo["base"], quick_demo["finetuned"]
    assert tuned["mAP"] - base["mAP"] >= MIN_TARGET_GAIN, (base, tuned)
    assert tuned["mAP50"] - base["mAP50"] >= 2 * MIN_TARGET_GAIN, (base, tuned)   # measured +0.421
    assert tuned["cgF1"] - base["cgF1"] >= MIN_TARGET_CGF1_GAIN, (base, tuned)
    assert tuned["presence_AUC"] - base["presence_AUC"] >= MIN_PRESENCE_AUC_GAIN, (base, tuned)
    concepts = quick_demo["base_concepts"]
    assert concepts["base"]["mAP"] - concepts["finetuned"]["mAP"] <= MAX_BASE_CONCEPT_DROP, concepts


def test_demo_writes_summary_report_and_overlays(quick_demo):
    from PIL import Image

    saved = json.loads((Path(quick_demo["output"]) / "summary.json").read_text())
    for key in ("base", "finetuned"):
        assert {"mAP", "mAP50", "cgF1", "presence_AUC"} <= set(saved[key])
        assert all(isinstance(saved[key][m], float) for m in ("mAP", "mAP50", "cgF1", "presence_AUC"))
    for key in ("base", "finetuned"):
        assert isinstance(saved["base_concepts"][key]["presence_AUC"], float)
    assert saved["finetuned"] == quick_demo["finetuned"]
    assert "![" in Path(quick_demo["report"]).read_text()
    assert len(quick_demo["overlays"]) == 3
    overlay = np.asarray(Image.open(quick_demo["overlays"][0]))
    assert overlay.shape[:2] == (20 + 336, 2 * 336)   # title, then base | fine-tuned at 3x


def test_an_existing_folder_is_never_overwritten_unasked(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo's; give a new or empty folder"):
        run_demo(mine, quick=True)
    earlier = tmp_path / "earlier"
    (earlier / "run").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "demo", "--output", str(earlier)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "an earlier demo is there; replace it" in result.stderr
    assert result.stderr.strip().endswith("(--overwrite)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "keep me"
