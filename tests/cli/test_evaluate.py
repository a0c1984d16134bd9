"""``sam3-lora evaluate``: argument parsing, the printed table and the flat JSON it writes."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam3_lora.cli.evaluate import add_parser
from sam3_lora.errors import DataError
from sam3_lora.evaluation.metrics import METRIC_KEYS


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="sam3-lora")
    add_parser(main.add_subparsers(dest="command"))
    return main


def rle(x: int, y: int, w: int, h: int) -> dict:
    mask = np.zeros((40, 50), dtype=np.uint8, order="F")
    mask[y:y + h, x:x + w] = 1
    return {"size": [40, 50], "counts": coco_mask.encode(mask)["counts"].decode("ascii")}


@pytest.fixture
def paths(tmp_path):
    """GT with 2 images x 2 categories (one object) and predictions hitting it."""
    gt = {"images": [{"id": i, "width": 50, "height": 40, "file_name": f"{i}.png"} for i in (1, 2)],
          "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": "dent"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10],
                           "area": 100.0, "iscrowd": 0, "segmentation": rle(5, 5, 10, 10)}]}
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": rle(5, 5, 10, 9)},
             {"image_id": 2, "category_id": 2, "score": 0.3, "segmentation": rle(0, 0, 4, 4)}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_evaluate_writes_the_flat_json_with_exactly_the_documented_keys(paths, tmp_path, capsys):
    gt, pred = paths
    out = tmp_path / "out" / "metrics.json"
    args = parser().parse_args(["evaluate", "--gt", str(gt), "--predictions", str(pred),
                                "--output", str(out)])
    assert args.func(args) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["mAP50"] == pytest.approx(1.0) and metrics["IL_TN"] == 3
    assert metrics["iou_type"] == "segm" and metrics["score_threshold"] == 0.5
    assert set(metrics["per_category"]) == {"crack", "dent"}
    printed = capsys.readouterr().out
    assert "mAP" in printed and "cgF1" in printed and "crack" in printed and "wrote" in printed


def test_evaluate_options_reach_the_metrics(paths, tmp_path, capsys):
    gt, pred = paths
    out = tmp_path / "m.json"
    args = parser().parse_args(["evaluate", "--gt", str(gt), "--predictions", str(pred),
                                "--iou-type", "bbox", "--score-threshold", "0.2",
                                "--output", str(out)])
    args.func(args)
    metrics = json.loads(out.read_text())
    assert metrics["iou_type"] == "bbox" and metrics["score_threshold"] == 0.2
    assert metrics["IL_FP"] == 1  # the 0.3 prediction now counts, on a negative unit


def test_undefined_cgf1_prints_as_na(tmp_path, capsys):
    gt = {"images": [{"id": 1, "width": 50, "height": 40}], "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                           "area": 25, "segmentation": rle(0, 0, 5, 5)}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text("[]")
    args = parser().parse_args(["evaluate", "--gt", str(tmp_path / "gt.json"),
                                "--predictions", str(tmp_path / "p.json")])
    with pytest.warns(UserWarning, match="no predictions"):
        args.func(args)
    printed = capsys.readouterr().out
    assert "n/a" in printed and "no negative" in printed


def test_evaluate_errors_are_user_errors(tmp_path):
    args = parser().parse_args(["evaluate", "--gt", str(tmp_path / "missing.json"),
                                "--predictions", str(tmp_path / "p.json")])
    with pytest.raises(DataError, match="missing.json: no such file"):
        args.func(args)


def test_help_has_an_example_and_the_options(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    for needle in ("--gt", "--predictions", "--iou-type", "--output", "--score-threshold",
                   "examples:", "sam3-lora evaluate --gt"):
        assert needle in text
    with pytest.raises(SystemExit):
        parser().parse_args(["evaluate", "--gt", "a.json", "--predictions", "b.json",
                             "--iou-type", "keypoints"])


@pytest.fixture
def no_scoring(monkeypatch):
    """Scoring fails the test: an unwritable --output must be refused before any work."""
    import sam3_lora.evaluation.metrics

    def scored(*args, **kwargs):
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(sam3_lora.evaluation.metrics, "evaluate_files", scored)


def test_unwritable_output_is_refused_before_scoring(paths, tmp_path, monkeypatch, no_scoring, capsys):
    from sam3_lora.cli import main

    gt, pred = paths
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests run as root, who may write anywhere: a read-only folder is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked)
                        else real_access(path, mode))
    for output, message in ((tmp_path / "folder", "is a folder; give a file path"),
                            (tmp_path / "plain" / "m.json", "is a file, so nothing can be written"),
                            (locked / "new" / "m.json", f"{locked} is not writable")):
        assert main(["evaluate", "--gt", str(gt), "--predictions", str(pred), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output {output}: ") and message in err and err.count("\n") == 1


def test_box_only_ground_truth_names_the_flag_on_the_command_line(tmp_path, capsys, monkeypatch):
    import sys
    import warnings

    from sam3_lora.cli.main import main

    # pytest records warnings; show them as Python would, through the CLI's formatwarning
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, *_:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno)))

    gt = {"images": [{"id": 1, "width": 50, "height": 40}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"),
                 "--predictions", str(tmp_path / "pred.json")]) == 2
    err = capsys.readouterr().err
    assert "warning: " in err and "evaluate boxes: bbox (--iou-type)" in err
    assert "error: " in err and "iou_type" not in err
