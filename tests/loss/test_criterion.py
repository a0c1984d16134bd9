import math

import pytest
import torch

from sam3_lora.config import LossConfig
from sam3_lora.loss.criterion import TERMS, Sam3Criterion, build_criterion
from sam3_lora.loss.matcher import HungarianMatcher

LN2 = math.log(2)


def target(boxes, masks=None, has_mask=None, m=2):
    boxes = torch.tensor(boxes, dtype=torch.float).reshape(-1, 4)
    n = len(boxes)
    masks = torch.zeros(n, m, m, dtype=torch.bool) if masks is None else torch.tensor(masks, dtype=torch.bool)
    has_mask = torch.ones(n, dtype=torch.bool) if has_mask is None else torch.tensor(has_mask)
    return {"boxes": boxes, "masks": masks, "has_mask": has_mask, "category_id": 1}


NEGATIVE = target([])

# One row, two predictions, one target (cxcywh 0.5, 0.5, 0.4, 0.4 = xyxy 0.3..0.7, mask = the
# top-left pixel of 2 x 2). Prediction 0: xyxy (0.3, 0.3, 0.7, 0.5) = cxcywh (0.5, 0.4, 0.4,
# 0.2), IoU = GIoU = 0.08 / 0.16 = 0.5, L1 = 0.1 + 0.2 = 0.3, logit 0 (p = 1/2), mask logits 0.
# Prediction 1: far away, logit -ln 3 (p = 1/4). Presence logit 0. Prediction 0 is matched.
POSITIVE = target([[0.5, 0.5, 0.4, 0.4]], masks=[[[1, 0], [0, 0]]])


def hand_outputs(rows=1):
    return {
        "pred_logits": torch.tensor([[0.0, -math.log(3)]] * rows),
        "pred_boxes": torch.tensor([[[0.3, 0.3, 0.7, 0.5], [0.0, 0.0, 0.1, 0.1]]] * rows),
        "pred_masks": torch.zeros(rows, 2, 2, 2),
        "presence_logits": torch.zeros(rows, 1),
    }


# The hand-computed unweighted terms of POSITIVE with hand_outputs():
# class: matched target t = 0.5^0.25 * 0.5^0.75 = 0.5, BCE(logit 0, 0.5) = ln 2, x pos_weight 10;
#        unmatched BCE(-ln 3, 0) = -ln(3/4) = ln(4/3), x p^2 = 1/16; mean over the 2 queries.
CLASS = (10 * LN2 + math.log(4 / 3) / 16) / 2
# presence: focal alpha 0.5, gamma 0 at p = 1/2, target 1: 0.5 * ln 2.
PRESENCE = 0.5 * LN2
BBOX = 0.3           # L1 / num_boxes (1)
GIOU = 1 - 0.5
# mask focal: p = 1/2 everywhere, (1 - p_t)^2 = 1/4, BCE = ln 2; alpha_t 0.25 on the one
# foreground pixel, 0.75 on the three others; mean over the 4 pixels.
MASK = (0.25 * 0.25 * LN2 + 3 * 0.75 * 0.25 * LN2) / 4
# dice: sum p = 2, sum t = 1, sum p t = 0.5 -> 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
DICE = 1 - 2 / 4


def criterion(**changes):
    """The hand-computed cases average classification over their real (2) queries."""
    return build_criterion(LossConfig(**{"aux_layers": False, "pad_num_queries": None, **changes}))


def test_each_term_by_hand():
    losses = criterion()(hand_outputs(), [POSITIVE])
    expected = {"loss_class": 20 * CLASS, "loss_presence": 20 * PRESENCE, "loss_bbox": 5 * BBOX,
                "loss_giou": 2 * GIOU, "loss_mask": 200 * MASK, "loss_dice": 10 * DICE}
    assert {k: v.item() for k, v in losses.items() if k != "loss"} == pytest.approx(expected)
    assert losses["loss"].item() == pytest.approx(sum(expected.values()))


def test_weight_dict_holds_sam3_weights():
    assert build_criterion(LossConfig()).weight_dict == {"loss_class": 20, "loss_presence": 20, "loss_bbox": 5,
                                                         "loss_giou": 2, "loss_mask": 200, "loss_dice": 10}


def test_criterion_takes_plain_values():
    weights = dict.fromkeys(TERMS, 0.0) | {"loss_bbox": 1.0}
    losses = Sam3Criterion(HungarianMatcher(), weights, aux_layers=False)(hand_outputs(), [POSITIVE])
    assert set(losses) == {"loss_bbox", "loss"} and losses["loss"].item() == pytest.approx(BBOX)
    with pytest.raises(ValueError, match="weight_dict lacks"):
        Sam3Criterion(HungarianMatcher(), {"loss_bbox": 1.0})


def test_negatives_train_presence_only():
    losses = criterion()(hand_outputs(), [NEGATIVE])
    for name in ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert losses[name].item() == 0.0
    # presence target 0 at p = 1/2: 0.5 * ln 2, weight 20
    assert losses["loss_presence"].item() == pytest.approx(20 * 0.5 * LN2)


def test_negative_rows_are_zeroed_in_classification_but_counted_in_its_mean():
    losses = criterion()(hand_outputs(rows=2), [POSITIVE, NEGATIVE])
    # Same positive-row sum as CLASS, averaged over 2 rows x 2 queries instead of 2.
    assert losses["loss_class"].item() == pytest.approx(20 * CLASS / 2)
    assert losses["loss_bbox"].item() == pytest.approx(5 * BBOX)            # num_boxes still 1
    assert losses["loss_presence"].item() == pytest.approx(20 * 0.5 * LN2)  # both rows cost 0.5 ln 2


def test_box_only_objects_get_no_mask_loss_but_count_in_the_normalisation():
    # A second target sitting exactly on prediction 1, without a mask: num_boxes = 2.
    both = target([[0.5, 0.5, 0.4, 0.4], [0.05, 0.05, 0.1, 0.1]], masks=[[[1, 0], [0, 0]], [[1, 1], [1, 1]]],
                  has_mask=[True, False])
    losses = criterion()(hand_outputs(), [both])
    assert losses["loss_mask"].item() == pytest.approx(200 * MASK / 2)
    assert losses["loss_dice"].item() == pytest.approx(10 * DICE / 2)
    assert losses["loss_bbox"].item() == pytest.approx(5 * BBOX / 2)   # prediction 1 is exact
    only_box = target([[0.5, 0.5, 0.4, 0.4]], has_mask=[False])
    losses = criterion()(hand_outputs(), [only_box])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0


def test_masks_are_resized_to_the_targets():
    outputs = hand_outputs()
    outputs["pred_masks"] = torch.zeros(1, 2, 4, 4)   # constant logits: resizing keeps them 0
    losses = criterion()(outputs, [POSITIVE])
    assert losses["loss_mask"].item() == pytest.approx(200 * MASK)


def test_classification_is_normalised_as_for_pad_num_queries():
    # SAM3's pad_n_queries: with 2 queries and a pad of 200, the sum is divided by 200 x rows,
    # a hundredth of the plain mean; a pad at or below N is the plain mean. Only that term moves.
    plain = criterion()(hand_outputs(), [POSITIVE])
    padded = criterion(pad_num_queries=200)(hand_outputs(), [POSITIVE])
    assert padded["loss_class"].item() == pytest.approx(20 * CLASS / 100)
    assert criterion(pad_num_queries=2)(hand_outputs(), [POSITIVE])["loss_class"].item() == \
        pytest.approx(20 * CLASS)
    assert {k: v.item() for k, v in padded.items() if k not in ("loss", "loss_class")} == \
        pytest.approx({k: v.item() for k, v in plain.items() if k not in ("loss", "loss_class")})
    # Two rows: 200 x 2 in the denominator, the negative row counted as in the mean.
    two = criterion(pad_num_queries=200)(hand_outputs(rows=2), [POSITIVE, NEGATIVE])
    assert two["loss_class"].item() == pytest.approx(20 * CLASS / 200)


def test_total_is_scaled_by_the_square_root_of_the_prompt_rows():
    # SAM3's scale_by_find_batch_size: the total x sqrt(rows); the logged terms are not scaled.
    rows = [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE]
    scaled = criterion()(hand_outputs(rows=4), rows)
    plain = criterion(scale_by_num_prompts=False)(hand_outputs(rows=4), rows)
    terms = {k: v.item() for k, v in plain.items() if k != "loss"}
    assert {k: v.item() for k, v in scaled.items() if k != "loss"} == pytest.approx(terms)
    assert plain["loss"].item() == pytest.approx(sum(terms.values()))
    assert scaled["loss"].item() == pytest.approx(2 * plain["loss"].item())   # sqrt(4)
    one = criterion()(hand_outputs(), [POSITIVE])
    assert one["loss"].item() == pytest.approx(sum(v.item() for k, v in one.items() if k != "loss"))
    # The gradient scales with it: that is the whole effect (clipping, Adam's epsilon).
    grads = []
    for scale in (True, False):
        outputs = {k: v.clone().requires_grad_(True) for k, v in hand_outputs(rows=4).items()}
        criterion(scale_by_num_prompts=scale)(outputs, rows)["loss"].backward()
        grads.append(outputs["pred_logits"].grad)
    assert torch.allclose(grads[0], 2 * grads[1])


@pytest.mark.parametrize("case", ["negatives only", "box-only objects only"])
def test_mask_terms_are_zero_without_masks_whatever_the_target_size(case):
    # Targets at 4 x 4 against 2 x 2 predictions, and no matched object with a mask: SAM3
    # returns 0 for both mask terms (this used to raise on the [0, 16] vs [0, 4] shapes).
    rows = ([target([], m=4)] if case == "negatives only"
            else [target([[0.5, 0.5, 0.4, 0.4]], has_mask=[False], m=4)])
    outputs = {k: v.clone().requires_grad_(True) for k, v in hand_outputs().items()}
    losses = criterion()(outputs, rows)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    losses["loss"].backward()
    assert outputs["pred_masks"].grad is not None and not outputs["pred_masks"].grad.any()


def test_aux_layers_repeat_class_presence_and_boxes():
    outputs = {**hand_outputs(), "aux_outputs": [{k: v for k, v in hand_outputs().items() if k != "pred_masks"}]}
    losses = criterion(aux_layers=True)(outputs, [POSITIVE])
    aux = {k.removesuffix("_aux_0"): v.item() for k, v in losses.items() if k.endswith("_aux_0")}
    assert aux == pytest.approx({"loss_class": 20 * CLASS, "loss_presence": 20 * PRESENCE,
                                 "loss_bbox": 5 * BBOX, "loss_giou": 2 * GIOU})
    with pytest.raises(ValueError, match="aux_outputs=True"):
        criterion(aux_layers=True)(hand_outputs(), [POSITIVE])


def test_one_to_many_term_by_hand():
    # Quality 0.3 p + 0.7 IoU: prediction 0 0.15 + 0.35 = 0.5 > 0.4, prediction 1 0.075: the
    # same single match as the Hungarian one, so each o2m term is 2 x its one-to-one term.
    losses = criterion(one_to_many=True)(hand_outputs(), [POSITIVE])
    o2m = {k.removesuffix("_o2m"): v.item() for k, v in losses.items() if k.endswith("_o2m")}
    assert o2m == pytest.approx({k: 2 * losses[k].item() for k in
                                 ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")})


def test_normalisation_is_all_reduced_when_distributed(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        losses = criterion()(hand_outputs(), [POSITIVE])
    finally:
        dist.destroy_process_group()
    assert losses["loss_bbox"].item() == pytest.approx(5 * BBOX)


# A richer batch for the config table: a positive row whose match depends on every matcher
# cost (see test_matcher.AMBIGUOUS: A exact but unlikely, B likely but off, C far) and a
# negative row; aux outputs differ from the final ones.
def table_batch():
    gen = torch.Generator().manual_seed(0)
    final = {
        "pred_logits": torch.tensor([[-4.0, 4.0, 0.0], [1.0, -1.0, 0.5]]),
        "pred_boxes": torch.tensor([[[0.3, 0.3, 0.7, 0.7], [0.0, 0.0, 0.25, 0.25], [0.8, 0.8, 0.9, 0.9]]] * 2),
        "pred_masks": torch.randn(2, 3, 4, 4, generator=gen),
        "presence_logits": torch.tensor([[0.3], [0.2]]),
    }
    aux = {k: v + 0.05 for k, v in final.items() if k != "pred_masks"}
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    targets = [target([[0.5, 0.5, 0.4, 0.4]], masks=masks.tolist(), m=4), target([], m=4)]
    return {**final, "aux_outputs": [aux]}, targets


CHANGES = {
    "class_weight": 0.0, "presence_weight": 0.0, "bbox_weight": 0.0, "giou_weight": 0.0,
    "mask_weight": 0.0, "dice_weight": 0.0, "aux_layers": False, "one_to_many": True,
    "one_to_many_weight": 5.0, "cost_class": 10.0, "cost_bbox": 0.0, "cost_giou": 0.0,
    "focal_alpha": 0.5, "focal_gamma": 0.0, "class_gamma": 0.0, "pos_weight": 1.0,
    "presence_alpha": 0.25, "presence_gamma": 2.0, "scale_by_num_prompts": False,
    "pad_num_queries": 2, "cost_mask": 1.0, "cost_dice": 1.0,
}
# The mask costs decide the match once the class cost is small and the box costs are off.
MASK_MATCHING = {"cost_class": 1e-3, "cost_bbox": 0.0, "cost_giou": 0.0}
NEEDS = {"one_to_many_weight": {"one_to_many": True}, "cost_mask": MASK_MATCHING, "cost_dice": MASK_MATCHING}


def test_the_table_covers_every_loss_field():
    assert set(CHANGES) == set(LossConfig.model_fields)


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_every_loss_field_changes_the_loss(field):
    outputs, targets = table_batch()
    base = LossConfig(**NEEDS.get(field, {}))
    changed = base.model_copy(update={field: CHANGES[field]})
    before = build_criterion(base)(outputs, targets)
    after = build_criterion(changed)(outputs, targets)
    assert not torch.isclose(before["loss"], after["loss"]), field
    if field.endswith("_weight") and CHANGES[field] == 0:
        term = "loss_" + field.removesuffix("_weight")
        assert term in before and not any(k.startswith(term) for k in after)


def test_zero_mask_weights_need_no_masks():
    outputs, targets = table_batch()
    del outputs["pred_masks"]
    losses = build_criterion(LossConfig(mask_weight=0, dice_weight=0))(outputs, targets)
    assert "loss_mask" not in losses and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("key, layer", [("pred_boxes", "last"), ("pred_logits", "last"), ("presence_logits", "last"),
                                        ("pred_masks", "last"), ("pred_boxes", "aux")])
def test_nonfinite_predictions_give_a_nan_loss_not_a_matcher_error(key, layer):
    """NaN costs made scipy's assignment raise ("matrix contains invalid numeric entries")
    before the trainer's guard could skip the step."""
    outputs = {**hand_outputs(), "aux_outputs": [{k: v for k, v in hand_outputs().items() if k != "pred_masks"}]}
    poisoned = outputs if layer == "last" else outputs["aux_outputs"][0]
    poisoned[key] = poisoned[key].clone().requires_grad_()
    with torch.no_grad():
        poisoned[key].view(-1)[0] = float("nan") if key != "pred_logits" else float("inf")
    losses = criterion(aux_layers=True)(outputs, [POSITIVE])
    assert set(losses) == {"loss"} and math.isnan(losses["loss"].item())
    assert losses["loss"].requires_grad   # part of the graph, as a NaN loss from the terms would be


def test_nonfinite_masks_do_not_matter_when_masks_weigh_nothing():
    outputs = {**hand_outputs(), "pred_masks": torch.full((1, 2, 2, 2), float("nan"))}
    losses = criterion(mask_weight=0, dice_weight=0)(outputs, [POSITIVE])
    assert math.isfinite(losses["loss"].item())
