"""Tracker prompts against a transcription of SAM 2's samplers (tests/data/sam2_prompts_reference.py)."""

import pytest
import torch
from scipy import ndimage

from sam3_lora.data.prompts import (
    PromptKind,
    box_prompt,
    center_click,
    choose_prompt_kind,
    click_prompt,
    correction_clicks,
    error_clicks,
    first_click,
)
from sam3_lora.evaluation.interactive import next_click
from tests.data import sam2_prompts_reference as sam2


def gen(seed):
    return torch.Generator().manual_seed(seed)


def blobs(seed, count=4, size=(24, 32), density=0.3):
    """(count, H, W) bool masks with real shapes."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.from_numpy(ndimage.gaussian_filter(torch.randn(count, *size, generator=g).numpy(),
                                                     sigma=(0, 2, 2)))
    return noise > noise.flatten(1).quantile(1 - density, dim=1)[:, None, None]


def predictions(gt):
    """Imperfect predictions: ``gt`` shifted by 3 columns."""
    return torch.roll(gt, shifts=3, dims=2)


@pytest.mark.parametrize("seed", range(4))
def test_boxes_equal_sam2_for_the_same_seed(seed):
    masks = blobs(seed)
    ours = box_prompt(masks, gen(seed))
    torch.manual_seed(seed)
    points, labels = sam2.sample_box_points(masks[:, None])
    assert torch.equal(ours.reshape(-1, 2, 2), points)
    assert labels.tolist() == [[2, 3]] * len(masks)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_points", [1, 3])
def test_error_clicks_equal_sam2_for_the_same_seed(seed, num_points):
    gt = blobs(seed)
    pred = predictions(gt)
    pred[0] = gt[0]  # no error: a negative click in the background
    gt[1] = False  # object absent, prediction not: negative clicks in the false positive
    for p in (pred, None):
        ours = error_clicks(gt, p, gen(seed), num_points)
        torch.manual_seed(seed)
        theirs = sam2.sample_random_points_from_errors(gt[:, None], None if p is None else p[:, None], num_points)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def at(masks, points):
    """masks (B, H, W), points (B, K, 2) x, y -> (B, K) the mask value under each click."""
    b = torch.arange(len(masks))[:, None].expand(points.shape[:2])
    return masks[b, points[..., 1].long(), points[..., 0].long()]


def test_a_click_prompt_is_positive_and_inside_the_mask():
    masks = blobs(0, count=16)
    for seed in range(5):
        points, labels = click_prompt(masks, gen(seed))
        assert labels.eq(1).all() and at(masks, points).all()


def test_a_center_click_is_where_the_evaluation_clicks_first():
    masks = blobs(3, count=8)
    points, labels = center_click(masks)
    assert labels.eq(1).all()
    for mask, point in zip(masks.numpy(), points[:, 0].tolist()):
        click = next_click(mask, torch.zeros_like(torch.from_numpy(mask)).numpy())
        assert click.positive and point == [click.x, click.y]
    with pytest.raises(ValueError, match="empty"):
        center_click(torch.zeros(1, 8, 8, dtype=torch.bool))


def test_first_click_centre_probability_picks_the_centre_and_zero_keeps_sam2s_stream():
    masks = blobs(4, count=4)
    centre, _ = center_click(masks)
    assert torch.equal(first_click(masks, gen(0), center_probability=1.0)[0], centre)
    # At 0 no draw is spent: the same clicks as click_prompt, and the generator where SAM 2's is.
    g_plain, g_first = gen(5), gen(5)
    assert torch.equal(click_prompt(masks, g_plain)[0], first_click(masks, g_first)[0])
    assert torch.equal(torch.rand(3, generator=g_plain), torch.rand(3, generator=g_first))
    chosen = [torch.equal(first_click(masks, gen(seed), 0.5)[0], centre) for seed in range(200)]
    assert 70 < sum(chosen) < 130  # about half (100 expected; 70 is > 4 sigma below)
    absent = torch.zeros(1, 8, 8, dtype=torch.bool)  # an absent object keeps its negative click
    assert first_click(absent, gen(0), center_probability=1.0)[1].tolist() == [[0]]


def test_correction_clicks_land_in_their_error_region():
    gt = blobs(1, count=16)
    pred = predictions(gt)
    missed, extra = gt & ~pred, ~gt & pred
    for seed in range(5):
        points, labels = error_clicks(gt, pred, gen(seed), num_points=8)
        positive = labels == 1
        assert at(missed, points)[positive].all()
        assert at(extra, points)[~positive].all()
        assert positive.any() and (~positive).any()


def test_no_error_gives_a_negative_click_in_the_background():
    gt = blobs(2, count=6)
    points, labels = error_clicks(gt, gt.clone(), gen(0), num_points=4)
    assert labels.eq(0).all() and not at(gt, points).any()
    absent = torch.zeros(2, 8, 8, dtype=torch.bool)
    points, labels = click_prompt(absent, gen(0))  # object absent: a negative click anywhere
    assert labels.eq(0).all()


def test_clicks_are_uniform_over_the_region():
    gt = torch.zeros(1, 6, 6, dtype=torch.bool)
    gt[0, 1:3, 1:3] = True  # 4 pixels
    points, _ = error_clicks(gt, None, gen(0), num_points=4000)
    counts = torch.bincount((points[0, :, 1] * 6 + points[0, :, 0]).long(), minlength=36)
    assert set(counts.nonzero().flatten().tolist()) == {7, 8, 13, 14}
    assert counts[[7, 8, 13, 14]].min() > 850  # 1000 expected each; 850 is > 5 sigma below


def test_box_noise_stays_within_its_bounds_and_the_image():
    masks = torch.zeros(3, 100, 120, dtype=torch.bool)
    masks[0, 10:30, 20:70] = True  # 50 x 20: noise up to 5 in x, 2 in y (10%)
    masks[1, :, :] = True  # whole image: noise up to the 20 px bound, clamped to the image
    masks[2, 50, 60] = True  # one pixel: zero width, no noise
    clean = torch.tensor([[20, 10, 69, 29], [0, 0, 119, 99], [60, 50, 60, 50]], dtype=torch.float)
    bound = torch.tensor([[4.9, 1.9] * 2, [11.9, 9.9] * 2, [0.0] * 4])
    moved = torch.stack([box_prompt(masks, gen(s)) for s in range(200)])  # (200, 3, 4)
    deviation = (moved - clean).abs()
    assert (deviation <= bound + 1e-5).all()
    assert (deviation[:, 0] > bound[0] * 0.9).any(dim=0).all()  # the noise reaches its bound
    assert (moved[..., 0::2] >= 0).all() and (moved[..., 0::2] <= 119).all()
    assert (moved[..., 1::2] >= 0).all() and (moved[..., 1::2] <= 99).all()
    assert torch.equal(box_prompt(masks, gen(0), noise=0.0), clean)


def test_an_empty_mask_gets_no_box():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2, 2] = True
    with pytest.raises(ValueError, match="mask 1 is empty"):
        box_prompt(masks, gen(0))


def test_everything_is_deterministic_by_seed():
    gt = blobs(3)
    pred = predictions(gt)

    def draw(seed):
        g = gen(seed)
        return (choose_prompt_kind(g), box_prompt(gt, g), click_prompt(gt, g),
                correction_clicks(gt, pred, g, prob_from_gt=0.5))

    first, again, other = draw(7), draw(7), draw(8)
    assert repr(first) == repr(again)
    assert repr(first) != repr(other)


def test_prompt_kinds_follow_sam2_probabilities():
    g = gen(0)
    kinds = [choose_prompt_kind(g) for _ in range(4000)]
    share = {k: kinds.count(k) / len(kinds) for k in PromptKind}
    assert share[PromptKind.MASK] == pytest.approx(0.5, abs=0.04)
    assert share[PromptKind.BOX] == pytest.approx(0.25, abs=0.04)
    assert share[PromptKind.CLICK] == pytest.approx(0.25, abs=0.04)
    assert {choose_prompt_kind(g, prob_points=0.0) for _ in range(50)} == {PromptKind.MASK}
    assert {choose_prompt_kind(g, prob_points=1.0, prob_box=1.0) for _ in range(50)} == {PromptKind.BOX}


def test_a_correction_from_the_gt_ignores_the_prediction():
    gt = blobs(4, count=8)
    pred = gt | predictions(gt)  # only false positives: corrections are negative
    _, labels = correction_clicks(gt, pred, gen(0), prob_from_gt=0.0)
    assert labels.eq(0).all()
    points, labels = correction_clicks(gt, pred, gen(0), prob_from_gt=1.0)
    assert labels.eq(1).all() and at(gt, points).all()
