import json

import pytest

from tests.evaluation.cases import HAND_GT, rect_rle, write


@pytest.fixture
def files(tmp_path):
    """write(predictions) -> (gt path, predictions path) for HAND_GT with masks."""
    gt = json.loads(json.dumps(HAND_GT))
    for ann in gt["annotations"]:
        ann["segmentation"] = rect_rle(*[int(v) for v in ann["bbox"]])
    gt_path = write(tmp_path, "gt.json", gt)
    return lambda preds: (gt_path, write(tmp_path, "pred.json", preds))
