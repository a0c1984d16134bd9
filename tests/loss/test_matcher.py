import math

import pytest
import torch

from sam3_lora.loss.matcher import HungarianMatcher, OneToManyMatcher
from sam3_lora.model.box_ops import box_cxcywh_to_xyxy


def target(*boxes):
    return {"boxes": torch.tensor(boxes, dtype=torch.float).reshape(-1, 4)}


def as_lists(indices):
    return [(p.tolist(), t.tolist()) for p, t in indices]


def test_picks_the_obvious_match():
    targets = [target([0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2])]  # cxcywh
    pred_cxcywh = torch.tensor([[[0.71, 0.7, 0.2, 0.2], [0.5, 0.1, 0.1, 0.1], [0.2, 0.19, 0.2, 0.2]]])
    outputs = {"pred_logits": torch.zeros(1, 3), "pred_boxes": box_cxcywh_to_xyxy(pred_cxcywh)}
    assert as_lists(HungarianMatcher()(outputs, targets)) == [([0, 2], [1, 0])]


def test_predictions_are_read_as_xyxy_and_targets_as_cxcywh():
    # Prediction 1 holds the target's numbers, but as xyxy they are another box.
    targets = [target([0.5, 0.5, 0.2, 0.2])]
    outputs = {"pred_logits": torch.zeros(1, 2),
               "pred_boxes": torch.tensor([[[0.4, 0.4, 0.6, 0.6], [0.5, 0.5, 0.2, 0.2]]])}
    assert as_lists(HungarianMatcher()(outputs, targets)) == [([0], [0])]


# One target (xyxy 0.3..0.7) and three predictions: A has the exact box but a low score,
# B a high score and a box off by 5 * L1 = 5 * 1.05 = 5.25 and 2 * (1 - GIoU) = 3.09, C is far.
# Focal class cost c(p) = -0.25 (1-p)^2 log p + 0.75 p^2 log(1-p): c(sigmoid(-4)) = 0.968,
# c(sigmoid(4)) = -2.905, a difference of 3.87 per unit of cost_class.
AMBIGUOUS_TARGETS = [target([0.5, 0.5, 0.4, 0.4])]
AMBIGUOUS = {
    "pred_logits": torch.tensor([[-4.0, 4.0, 0.0]]),
    "pred_boxes": torch.tensor([[[0.3, 0.3, 0.7, 0.7], [0.0, 0.0, 0.25, 0.25], [0.8, 0.8, 0.9, 0.9]]]),
}


@pytest.mark.parametrize("costs, winner", [
    ({}, 0),                       # A: 2 * 0.968 + 0 - 2 = -0.06 beats B: -5.81 + 5.25 + 1.09 = 0.53
    ({"cost_class": 10.0}, 1),    # the score gap (38.7) outweighs B's box costs (8.34)
    ({"cost_bbox": 0.0}, 1),      # B's GIoU cost alone (3.09) is less than the score gap (7.75)
    ({"cost_giou": 0.0}, 1),      # B's L1 cost alone (5.25) too
])
def test_each_cost_term_counts(costs, winner):
    assert as_lists(HungarianMatcher(**costs)(AMBIGUOUS, AMBIGUOUS_TARGETS)) == [([winner], [0])]


def test_cost_by_hand():
    # Target cxcywh (0.5, 0.5, 0.4, 0.4) = xyxy (0.3, 0.3, 0.7, 0.7); prediction xyxy
    # (0.3, 0.3, 0.7, 0.5) = cxcywh (0.5, 0.4, 0.4, 0.2), logit 0 (p = 0.5).
    l1 = 0 + 0.1 + 0 + 0.2
    giou = (0.4 * 0.2) / 0.16 - 0   # IoU 0.5; the hull is the target itself
    p = 0.5
    focal = -0.25 * (1 - p) ** 2 * math.log(p) + 0.75 * p**2 * math.log(1 - p)   # = -0.0866
    outputs = {"pred_logits": torch.zeros(1, 1), "pred_boxes": torch.tensor([[[0.3, 0.3, 0.7, 0.5]]])}
    cost, sizes = HungarianMatcher().cost_matrix(outputs, AMBIGUOUS_TARGETS)
    assert sizes == [1] and cost.shape == (1, 1, 1)
    assert cost.item() == pytest.approx(5 * l1 + 2 * focal - 2 * giou)   # = 0.3267


def test_batched_equals_one_by_one():
    gen = torch.Generator().manual_seed(0)
    num_targets = [3, 0, 1, 5]
    targets = [target(*(torch.rand(n, 4, generator=gen) * 0.4 + 0.1).tolist()) for n in num_targets]
    outputs = {"pred_logits": torch.randn(4, 7, generator=gen),
               "pred_boxes": box_cxcywh_to_xyxy(torch.rand(4, 7, 4, generator=gen) * 0.4 + 0.1)}
    matcher = HungarianMatcher()
    batched = as_lists(matcher(outputs, targets))
    for i, t in enumerate(targets):
        row = {k: v[i : i + 1] for k, v in outputs.items()}
        assert as_lists(matcher(row, [t])) == [batched[i]]
    assert [len(p) for p, _ in batched] == num_targets


def test_rows_without_targets_get_empty_indices():
    outputs = {"pred_logits": torch.zeros(2, 3), "pred_boxes": torch.rand(2, 3, 4)}
    for matcher in (HungarianMatcher(), OneToManyMatcher()):
        indices = matcher(outputs, [target(), target()])
        assert as_lists(indices) == [([], []), ([], [])]
        assert all(p.dtype == t.dtype == torch.int64 for p, t in indices)


def test_more_targets_than_predictions_matches_as_many_as_predictions():
    outputs = {"pred_logits": torch.zeros(1, 2), "pred_boxes": box_cxcywh_to_xyxy(torch.full((1, 2, 4), 0.3))}
    (pred, tgt), = HungarianMatcher()(outputs, [target(*[[0.3] * 4] * 3)])
    assert sorted(pred.tolist()) == [0, 1] and len(set(tgt.tolist())) == 2


def test_all_zero_costs_are_refused():
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


def test_one_to_many_by_hand():
    # Target xyxy (0.3, 0.3, 0.7, 0.7); quality = 0.3 p + 0.7 IoU, threshold 0.4, top 4.
    boxes = torch.tensor([[[0.3, 0.3, 0.7, 0.7],     # IoU 1:   0.3 * 0.5 + 0.7       = 0.85
                           [0.3, 0.3, 0.7, 0.5],     # IoU 0.5: 0.3 * 0.5 + 0.35      = 0.50
                           [0.3, 0.3, 0.5, 0.5],     # IoU .25: 0.15 + 0.175          = 0.325 < 0.4
                           [0.3, 0.3, 0.7, 0.6],     # IoU .75: 0.15 + 0.525          = 0.675
                           [0.3, 0.3, 0.7, 0.65],    # IoU .875                        = 0.7625
                           [0.3, 0.3, 0.7, 0.69]]])  # IoU .975                        = 0.8325
    outputs = {"pred_logits": torch.zeros(1, 6), "pred_boxes": boxes}
    (pred, tgt), = OneToManyMatcher()(outputs, AMBIGUOUS_TARGETS)
    # The four best are 0, 5, 4, 3 (1 is fifth, 2 is below threshold).
    assert sorted(pred.tolist()) == [0, 3, 4, 5] and tgt.tolist() == [0] * 4
    (pred, _), = OneToManyMatcher(threshold=0.6, topk=6)(outputs, AMBIGUOUS_TARGETS)
    assert sorted(pred.tolist()) == [0, 3, 4, 5]


# ---- mask costs (Mask2Former's matching; off by default, as in SAM3) --------------------

def square_mask(top: int, left: int, size: int = 4, side: int = 8) -> torch.Tensor:
    mask = torch.zeros(side, side)
    mask[top:top + size, left:left + size] = 1
    return mask


def mask_case():
    """Two predictions with the same box and score; only prediction 1's mask is the target's."""
    masks = torch.stack([square_mask(0, 0), square_mask(4, 4)])
    outputs = {"pred_logits": torch.zeros(1, 2),
               "pred_boxes": torch.tensor([[[0.2, 0.2, 0.6, 0.6], [0.2, 0.2, 0.6, 0.6]]]),
               "pred_masks": ((torch.stack([square_mask(4, 4), square_mask(0, 0)]) * 2 - 1) * 8)[None]}
    targets = [{**target([0.4, 0.4, 0.4, 0.4]), "masks": masks[:1], "has_mask": torch.tensor([True])}]
    return outputs, targets


def test_mask_costs_choose_the_prediction_whose_mask_fits():
    outputs, targets = mask_case()
    # Boxes and scores tie, so without mask costs the choice is the first prediction.
    assert as_lists(HungarianMatcher()(outputs, targets)) == [([0], [0])]
    assert as_lists(HungarianMatcher(cost_mask=5.0)(outputs, targets)) == [([1], [0])]
    assert as_lists(HungarianMatcher(cost_dice=5.0)(outputs, targets)) == [([1], [0])]


def test_mask_costs_by_hand_and_zero_for_box_only_targets():
    outputs, targets = mask_case()
    plain, _ = HungarianMatcher().cost_matrix(outputs, targets)
    with_masks, _ = HungarianMatcher(cost_mask=1.0, cost_dice=1.0).cost_matrix(outputs, targets)
    # Prediction 0, the misfit (the fitting one costs ~1e-3: too little to check by difference).
    logits, tgt = outputs["pred_masks"][0, 0].flatten(), targets[0]["masks"][0].flatten()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, tgt)
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * tgt).sum() + 1) / (prob.sum() + tgt.sum() + 1)
    assert (with_masks - plain)[0, 0, 0].item() == pytest.approx((bce + dice).item(), rel=1e-5)
    box_only = [{**targets[0], "has_mask": torch.tensor([False])}]
    assert torch.equal(HungarianMatcher(cost_mask=1.0, cost_dice=1.0).cost_matrix(outputs, box_only)[0],
                       HungarianMatcher().cost_matrix(outputs, box_only)[0])
    # Outputs without masks (the intermediate decoder layers) are matched on class and box.
    no_masks = {k: v for k, v in outputs.items() if k != "pred_masks"}
    assert torch.equal(HungarianMatcher(cost_mask=1.0).cost_matrix(no_masks, targets)[0], plain)
