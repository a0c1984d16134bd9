import json

import pytest

from sam3_lora.config import load_config
from sam3_lora.data.coco.split import load_coco_split
from sam3_lora.data.interactive import object_index
from sam3_lora.data.synth import synthesize
from sam3_lora.recipes.validate import validate


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 2, "valid": 2}, image_size=112, seed=1)
    return root


def test_validate_scores_the_tracker_with_simulated_clicks(shapes, tmp_path):
    config = load_config(None, ["model.task=interactive", "model.source=sam3-tiny", f"data.root={shapes}",
                                f"output.dir={tmp_path / 'run'}"])
    summary = validate(config, no_lora=True, output=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["output"] == str(tmp_path / "eval") and written["weights"] == "base model"
    assert written["objects"] == len(object_index(load_coco_split(shapes / "valid")))
    for key in ("mIoU_1", "mIoU_3", "mIoU_5", "box_mIoU"):
        assert 0.0 <= written[key] <= 1.0
    for key in ("NoC_85", "NoC_90"):
        assert 1.0 <= written[key] <= 20.0
    assert set(written["per_category"]) <= set(load_coco_split(shapes / "valid").categories.values())


def test_the_command_prints_the_click_metrics(shapes, tmp_path, capsys):
    from sam3_lora.cli import main

    code = main(["validate", "--config", "minimal", "model.task=interactive", "model.source=sam3-tiny",
                 f"data.root={shapes}", f"output.dir={tmp_path / 'run'}", "--no-lora"])
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "run" / "eval-valid" / "metrics.json").read_text())
    assert code == 0 and "mIoU_1" in out and "NoC_90" in out
    assert f"{written['mIoU_1']:.3f}" in out.splitlines()[1] and "box_mIoU" in out
