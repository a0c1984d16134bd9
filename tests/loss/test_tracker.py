"""TrackerCriterion against a transcription of Meta's SAM 2 loss (tests/loss/sam2_reference.py)."""

import itertools

import pytest
import torch

from sam3_lora.loss.tracker import TRACKER_TERMS, TrackerCriterion, actual_iou
from tests.loss.sam2_reference import CORE_LOSS_KEY, MultiStepMultiMasksAndIous

SAM21_WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def random_case(seed, frames=2, objects=3, steps=3, first_masks=3, size=8, absent=(1,)):
    """Outputs as SAM 2 gives them (M masks on the first step, 1 on corrections) and targets
    with the objects in ``absent`` empty on every frame (their object score then matters)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.rand(frames, objects, size, size, generator=g) > 0.6
    targets[:, list(absent)] = False
    outputs = []
    for _ in range(frames):
        frame = []
        for s in range(steps):
            m = first_masks if s == 0 else 1
            frame.append({
                "pred_masks": (3 * torch.randn(objects, m, size, size, generator=g)).requires_grad_(),
                "iou_scores": torch.rand(objects, m, generator=g).requires_grad_(),
                "object_score_logits": (2 * torch.randn(objects, 1, generator=g)).requires_grad_(),
            })
        outputs.append(frame)
    return outputs, targets


def as_meta(outputs):
    """Our per-frame step lists -> Meta's per-frame dicts of per-step lists (same tensors)."""
    return [{"multistep_pred_multimasks_high_res": [s["pred_masks"] for s in frame],
             "multistep_pred_ious": [s["iou_scores"] for s in frame],
             "multistep_object_score_logits": [s["object_score_logits"] for s in frame]}
            for frame in outputs]


def leaves(outputs):
    return [t for frame in outputs for step in frame for t in step.values()]


OPTIONS = [{"supervise_all_iou": a, "iou_use_l1_loss": b, "pred_obj_scores": c}
           for a, b, c in itertools.product([True, False], repeat=3)]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("first_masks", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_term_the_total_and_the_gradients_equal_meta(options, first_masks, seed):
    outputs, targets = random_case(seed, first_masks=first_masks)
    ours = TrackerCriterion(**options)(outputs, targets)
    meta = MultiStepMultiMasksAndIous(dict(SAM21_WEIGHTS), focal_gamma_obj_score=0.0,
                                      focal_alpha_obj_score=-1.0, **options)(as_meta(outputs), targets)
    for name in TRACKER_TERMS:
        torch.testing.assert_close(ours[name], torch.as_tensor(meta[name]).float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["loss"], meta[CORE_LOSS_KEY], rtol=1e-5, atol=1e-7)

    params = leaves(outputs)
    ours_grad = torch.autograd.grad(ours["loss"], params, allow_unused=True)
    meta_grad = torch.autograd.grad(meta[CORE_LOSS_KEY], params, allow_unused=True)
    for a, b in zip(ours_grad, meta_grad):
        if a is None or b is None:  # object logits when pred_obj_scores is off
            assert a is None or not a.any()
            assert b is None or not b.any()
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_other_weights_and_focal_parameters_equal_meta():
    outputs, targets = random_case(5, frames=1, objects=4, steps=2, absent=(0, 3))
    weights = {"loss_mask": 5.0, "loss_dice": 2.0, "loss_iou": 0.5, "loss_class": 3.0}
    kwargs = {"focal_alpha": 0.4, "focal_gamma": 1.5, "focal_alpha_obj_score": 0.3, "focal_gamma_obj_score": 2.0}
    ours = TrackerCriterion(weight_mask=5.0, weight_dice=2.0, weight_iou=0.5, weight_class=3.0,
                            **kwargs)(outputs, targets)
    meta = MultiStepMultiMasksAndIous(weights, supervise_all_iou=True, iou_use_l1_loss=True,
                                      pred_obj_scores=True, **kwargs)(as_meta(outputs), targets)
    for name in TRACKER_TERMS:
        torch.testing.assert_close(ours[name], meta[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["loss"], meta[CORE_LOSS_KEY], rtol=1e-5, atol=1e-7)


def test_only_the_lowest_loss_mask_gets_mask_gradients():
    outputs, targets = random_case(2, frames=1, objects=2, steps=1, absent=())
    criterion = TrackerCriterion(supervise_all_iou=False)
    masks = outputs[0][0]["pred_masks"]
    (grad,) = torch.autograd.grad(criterion(outputs, targets)["loss"], [masks])
    touched = grad.flatten(2).abs().sum(-1) > 0  # (N, M)
    assert touched.sum(1).tolist() == [1, 1]


def test_absent_objects_train_only_the_object_score():
    outputs, targets = random_case(3, frames=1, objects=2, steps=2, absent=(0,))
    losses = TrackerCriterion()(outputs, targets)
    params = [outputs[0][s][k] for s in range(2) for k in ("pred_masks", "iou_scores")]
    grads = torch.autograd.grad(losses["loss"], params)
    assert all(not g[0].any() for g in grads)  # object 0: no mask or IoU gradient
    assert all(g[1].any() for g in grads)
    (score_grad,) = torch.autograd.grad(losses["loss_class"], [outputs[0][0]["object_score_logits"]])
    assert score_grad[0, 0] > 0  # absent: pushed toward "no object"


def test_steps_and_frames_add_up():
    outputs, targets = random_case(4, frames=2, objects=3, steps=3)
    criterion = TrackerCriterion()
    whole = criterion(outputs, targets)["loss"]
    parts = sum(criterion([[step]], frame_targets[None])["loss"]
                for frame, frame_targets in zip(outputs, targets) for step in frame)
    torch.testing.assert_close(whole, parts)


def test_actual_iou_by_hand():
    logits = torch.tensor([[[1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]]])  # (1, 2, 4)
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0]] * 2])
    # mask 0: inter 1, union 3; mask 1: empty prediction -> 0 / 2
    torch.testing.assert_close(actual_iou(logits, target), torch.tensor([[1 / 3, 0.0]]))
    # both empty: the union is clamped to 1, IoU 0 (SAM 2's convention)
    assert actual_iou(-torch.ones(1, 1, 4), torch.zeros(1, 1, 4)).item() == 0


def test_frame_count_mismatch_is_refused():
    outputs, targets = random_case(0, frames=2)
    with pytest.raises(ValueError, match="1 frames of outputs for 2"):
        TrackerCriterion()(outputs[:1], targets)
