"""Bad ground truth and predictions: one clear line each, never a crash."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from sam3_lora.errors import DataError, Sam3LoraError
from sam3_lora.evaluation.metrics import (
    evaluate_files,
)
from tests.evaluation.cases import (
    GOOD,
    rect_rle,
    write,
)

# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(("prediction", "message"), [
    ({**GOOD, "image_id": 999}, r"prediction 1 has image_id 999, which is not in the ground truth.*same split"),
    ({**GOOD, "image_id": "1"}, r"image_id '1'.*numbers, not strings"),
    ({**GOOD, "category_id": 7}, r"category_id 7, which is not in the ground truth.*category ids"),
    ({**GOOD, "score": 1.5}, r"score 1.5; scores must be probabilities in \[0, 1\]"),
    ({**GOOD, "score": -0.1}, r"score -0.1"),
    ({**GOOD, "score": None}, r"score None"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": "0zzzzz"}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": "2"}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [100, 100], "counts": [5, 3]}}, r"malformed RLE"),
    ({**GOOD, "segmentation": {"size": [50, 50], "counts": "PP5"}}, r"size \[50, 50\].*\[100, 100\]"),
    ({**GOOD, "segmentation": [[0, 0, 5, 0, 5, 5]]}, r"list segmentation; predictions need an RLE"),
    ({k: v for k, v in GOOD.items() if k != "segmentation"},
     r"no segmentation; add its RLE mask, or evaluate boxes: bbox \(argument iou_type\)"),
])
def test_bad_prediction_gives_one_clear_line(files, prediction, message):
    with pytest.raises(DataError, match=message) as error:
        evaluate_files(*files([GOOD, prediction]))
    assert "\n" not in str(error.value) and "pred.json" in str(error.value)


def test_unknown_ids_are_counted(files):
    preds = [{**GOOD, "image_id": 50 + i} for i in range(4)]
    with pytest.raises(DataError, match=r"image_id 50.*and 3 more predictions with unknown image_ids"):
        evaluate_files(*files(preds))


@pytest.mark.parametrize("content", ["[]", " \n"])
def test_empty_predictions_warn_and_score_zero(files, tmp_path, content):
    gt_path, pred_path = files([])
    (tmp_path / "pred.json").write_text(content)
    with pytest.warns(UserWarning, match="no predictions"):
        result = evaluate_files(gt_path, pred_path)
    assert result["mAP"] == 0.0 and result["cgF1"] == 0.0 and result["pmF1"] == 0.0
    assert result["mAP_large"] is None and result["num_predictions"] == 0


@pytest.mark.parametrize(("gt_text", "message"), [
    ("[]", r"is a JSON list \(COCO results\?\), not a COCO ground-truth file"),
    ('{"info": {}}', r"not a COCO ground-truth file \(needs top-level 'images'"),
    ('{"images": [], "categories": []}', r"has no images"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [], "annotations": '
      '[{"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}'),
     r"annotation id 4 has image_id 2, which is not in 'images'"),
    ('{"images": [{"id": 1, "file_name": "x.png"}], "categories": []}', r"image id 1 has no valid height/width"),
    ('{"images": [{"id": 1, "width": 10, "height": 10}]', r"truncated"),
    ('{"images": [{"id": 1, "width": 10, "height": 10, "neg_category_ids": 3}], "categories": []}',
     r"image id 1 has neg_category_ids 3; write a list of category ids"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1}], '
      '"annotations": [{"id": 9, "image_id": 1, "category_id": 1, '
      '"segmentation": {"size": [10, 10], "counts": "0zz"}}]}'),
     r"annotation id 9 \(annotations\[0\]\) has a malformed RLE segmentation"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1}], '
      '"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], '
      '"area": NaN}]}'),
     r"annotation id 3 has area nan; write the object's area in pixels \(or leave it out"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1}], '
      '"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}, '
      '{"id": 3, "image_id": 1, "category_id": 1, "bbox": [4, 4, 2, 2]}]}'),
     r"annotation id 3 appears twice \(annotations\[0\] and \[1\]\); give every annotation a unique id"),
    (('{"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1}], '
      '"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1e300, 2]}]}'),
     r"annotation id 3 has bbox \[0, 0, 1e\+300, 2\] \('bbox' holds 1e\+300, not a pixel position\)"),
])
def test_bad_ground_truth_gives_one_clear_line(tmp_path, gt_text, message):
    (tmp_path / "gt.json").write_text(gt_text)
    pred_path = write(tmp_path, "pred.json", [])
    with pytest.raises(DataError, match=message) as error:
        evaluate_files(tmp_path / "gt.json", pred_path)
    assert "\n" not in str(error.value) and "gt.json" in str(error.value)


def test_missing_files_and_swapped_arguments(files, tmp_path):
    gt_path, pred_path = files([GOOD])
    with pytest.raises(DataError, match=r"nope.json: no such file; give the path of the COCO ground"):
        evaluate_files(tmp_path / "nope.json", pred_path)
    with pytest.raises(DataError, match=r"is a COCO dataset \(it has 'annotations'\), not COCO results"):
        evaluate_files(gt_path, gt_path)
    with pytest.raises(Sam3LoraError, match=r"outside \[0, 1\]"):
        evaluate_files(gt_path, pred_path, score_threshold=5)




# ------------------------------------------- ground truth pycocotools would crash on
# Each ran to a segfault (exit 139), an out-of-memory kill or a traceback before the GT was
# checked as `data validate` checks it. They run in a child process with bounded memory, so
# a crash fails the test instead of killing pytest.

CRASHING_GT = {
    "polygon at 1e9 px": {"segmentation": [[0, 0, 1e9, 0, 1e9, 1e9]]},
    "polygon with NaN": {"segmentation": [[0, 0, math.nan, 0, 10, 10]]},
    "polygon with infinity": {"segmentation": [[0, 0, math.inf, 0, 10, 10]]},
    "flat polygon with NaN": {"segmentation": [0, 0, math.nan, 0, 10, 10]},
    "box-only object at 1e9 px": {"bbox": [0, 0, 1e9, 1e9]},
    "RLE run beyond 32 bits": {"segmentation": {"size": [100, 100], "counts": [10**12]}},
    "RLE with a negative run": {"segmentation": {"size": [100, 100], "counts": [-5, 10005]}},
    "RLE with a fractional run": {"segmentation": {"size": [100, 100], "counts": [9999.5]}},
}
PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
from sam3_lora.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("case", list(CRASHING_GT), ids=list(CRASHING_GT))
def test_ground_truth_that_crashed_pycocotools_is_one_line(tmp_path, case):
    annotation = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0,
                  "segmentation": rect_rle(10, 10, 20, 20), **CRASHING_GT[case]}
    if "segmentation" not in CRASHING_GT[case]:
        del annotation["segmentation"]
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}], "annotations": [annotation]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))   # NaN and Infinity as Python writes them
    pred = write(tmp_path, "pred.json", [{"image_id": 1, "category_id": 1, "score": 0.9,
                                          "segmentation": rect_rle(10, 10, 20, 20)}])
    result = subprocess.run([sys.executable, "-c", PROBE, "evaluate", "--gt", str(tmp_path / "gt.json"),
                             "--predictions", pred], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and len(message) < 300
    assert "gt.json: annotation id 7" in message and "Traceback" not in message


def test_box_only_ground_truth_warns_naming_the_option(tmp_path):
    gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}
    gt_path, pred_path = write(tmp_path, "gt.json", gt), write(tmp_path, "pred.json", [])
    with pytest.warns(UserWarning, match=r"no mask.*evaluate boxes: bbox \(argument iou_type\)"):
        evaluate_files(gt_path, pred_path)
