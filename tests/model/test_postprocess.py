import math

import numpy as np
import pytest
import torch

from sam3_lora.model.postprocess import postprocess, postprocess_query, query_scores


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def outputs(logits, presence, boxes=None, masks=None):
    n = len(logits)
    return {
        "pred_logits": torch.tensor([logits], dtype=torch.float32),
        "presence_logits": torch.tensor([[presence]], dtype=torch.float32),
        "pred_boxes": torch.tensor([boxes or [[0.1, 0.2, 0.5, 0.6]] * n], dtype=torch.float32),
        "pred_masks": masks if masks is not None else torch.full((1, n, 4, 4), 5.0),
    }


def test_score_is_query_times_presence_probability():
    scores = query_scores(torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[0.0]]))
    expected = [sigmoid(2) * 0.5, sigmoid(-1) * 0.5, 0.25]   # presence logit 0 -> 0.5
    assert scores[0].tolist() == pytest.approx(expected)


def test_threshold_keeps_the_confident_best_first():
    [found] = postprocess(outputs([0.0, 2.0, -1.0], presence=0.0), [(100, 200)], threshold=0.2)
    assert found.scores.tolist() == pytest.approx([sigmoid(2) * 0.5, 0.25])   # 0.134 dropped
    assert found.presence == pytest.approx(0.5)


def test_absent_concept_is_refused_by_the_presence_head():
    [found] = postprocess(outputs([10.0, 10.0], presence=-20.0), [(100, 200)], threshold=0.5)
    assert len(found) == 0 and found.masks.shape == (0, 100, 200)


def test_boxes_in_pixels_of_the_original_image():
    [found] = postprocess(outputs([3.0], presence=3.0, boxes=[[0.1, 0.2, 0.5, 0.6]]), [(100, 200)], threshold=0.5)
    assert found.boxes.tolist() == [pytest.approx([20.0, 20.0, 100.0, 60.0])]   # x by width 200, y by height 100


def test_masks_resized_to_the_image_and_binarised_at_half():
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[..., :, :2] = 5.0                                  # left half: probability > 0.5
    [found] = postprocess(outputs([3.0], 3.0, masks=logits), [(10, 20)], threshold=0.5)
    assert found.masks.shape == (1, 10, 20) and found.masks.dtype == np.bool_
    assert found.masks[0, :, :10].all() and not found.masks[0, :, 10:].any()


def test_mask_nms_is_optional():
    masks = torch.full((1, 3, 4, 4), -5.0)
    masks[0, 0, :2] = masks[0, 1, :2] = 5.0                   # 0 and 1: the same top half
    masks[0, 2, 2:] = 5.0                                     # 2: the bottom half
    raw = outputs([3.0, 2.0, 1.0], 3.0, masks=masks)
    args = (raw["pred_logits"][0], raw["presence_logits"][0], raw["pred_boxes"][0], raw["pred_masks"][0], (8, 8))
    assert len(postprocess_query(*args, threshold=0.1)) == 3
    kept = postprocess_query(*args, threshold=0.1, mask_nms_iou=0.5)
    assert kept.scores.tolist() == pytest.approx([query_scores(torch.tensor([[v]]), torch.tensor([[3.0]])).item()
                                                  for v in (3.0, 1.0)])


def test_without_masks():
    [found] = postprocess(outputs([3.0], 3.0), [(10, 20)], with_masks=False)
    assert found.masks is None and len(found) == 1


def test_max_detections_keeps_the_best_and_chunked_resizing_changes_nothing(monkeypatch):
    import sam3_lora.model.postprocess as module

    masks = torch.randn(1, 6, 8, 8)
    logits = [0.5, 3.0, -1.0, 2.0, 1.0, 0.0]
    [every] = postprocess(outputs(logits, 0.0, masks=masks), [(30, 40)], threshold=0.0)
    [best] = postprocess(outputs(logits, 0.0, masks=masks), [(30, 40)], threshold=0.0, max_detections=2)
    assert best.scores.tolist() == pytest.approx(every.scores[:2].tolist())
    np.testing.assert_array_equal(best.masks, every.masks[:2])
    monkeypatch.setattr(module, "UPSAMPLE_FLOATS", 30 * 40 * 2)   # two masks at a time
    [chunked] = postprocess(outputs(logits, 0.0, masks=masks), [(30, 40)], threshold=0.0)
    np.testing.assert_array_equal(chunked.masks, every.masks)
