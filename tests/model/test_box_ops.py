import pytest
import torch

from sam3_lora.model.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_box_iou,
    paired_generalized_box_iou,
)

# Two 0.4 x 0.4 boxes overlapping on a 0.2 x 0.2 square, and one far from both.
A = [0.0, 0.0, 0.4, 0.4]
B = [0.2, 0.2, 0.6, 0.6]
FAR = [0.8, 0.8, 1.0, 1.0]


def test_conversions_are_inverse():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.allclose(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_iou_and_giou_by_hand():
    iou, union = box_iou(torch.tensor([A]), torch.tensor([B, FAR]))
    # A with B: intersection 0.2*0.2 = 0.04, union 0.16 + 0.16 - 0.04 = 0.28
    assert iou[0, 0].item() == pytest.approx(0.04 / 0.28)
    assert union[0, 0].item() == pytest.approx(0.28)
    assert iou[0, 1].item() == 0.0
    giou = generalized_box_iou(torch.tensor([A]), torch.tensor([B, FAR]))
    # hull of A and B: (0, 0, 0.6, 0.6), area 0.36 -> 1/7 - (0.36 - 0.28) / 0.36
    assert giou[0, 0].item() == pytest.approx(1 / 7 - 0.08 / 0.36, abs=1e-6)
    # hull of A and FAR: the unit square; union 0.16 + 0.04 -> 0 - (1 - 0.2) / 1
    assert giou[0, 1].item() == pytest.approx(-0.8)
    assert generalized_box_iou(torch.tensor([B]), torch.tensor([B])).item() == pytest.approx(1.0)


def test_batched_pairwise_equals_row_by_row():
    gen = torch.Generator().manual_seed(0)
    boxes1 = box_cxcywh_to_xyxy(torch.rand(3, 5, 4, generator=gen) * 0.5 + 0.1)
    boxes2 = box_cxcywh_to_xyxy(torch.rand(3, 2, 4, generator=gen) * 0.5 + 0.1)
    batched = generalized_box_iou(boxes1, boxes2)
    assert batched.shape == (3, 5, 2)
    for i in range(3):
        assert torch.allclose(batched[i], generalized_box_iou(boxes1[i], boxes2[i]))


def test_paired_versions_are_the_diagonal():
    boxes1, boxes2 = torch.tensor([A, B, FAR]), torch.tensor([B, B, A])
    assert torch.allclose(paired_box_iou(boxes1, boxes2)[0], box_iou(boxes1, boxes2)[0].diagonal())
    assert torch.allclose(paired_generalized_box_iou(boxes1, boxes2),
                          generalized_box_iou(boxes1, boxes2).diagonal())


def test_zero_area_boxes_stay_finite():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert torch.isfinite(generalized_box_iou(point, point)).all()
    assert torch.isfinite(paired_generalized_box_iou(point, torch.tensor([A]))).all()
