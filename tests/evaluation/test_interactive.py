"""The click protocol and NoC / mIoU@k against a transcription of RITM (tests/evaluation/ritm_reference.py)."""

import numpy as np
import pytest
from scipy import ndimage

from sam3_lora.errors import Sam3LoraError
from sam3_lora.evaluation.interactive import (
    Click,
    click_ious,
    next_click,
    number_of_clicks,
    summarize,
    summarize_by_category,
)
from tests.evaluation import ritm_reference as ritm


def blob(rng, shape=(40, 50), density=0.25):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3)
    return noise > np.quantile(noise, 1 - density)


def disks(shape, points, labels, radius):
    """A fake model: disks around the positive clicks, minus disks around the negative ones."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    near = [(xx - x) ** 2 + (yy - y) ** 2 <= radius**2 for x, y in points]
    pos = np.any([n for n, lab in zip(near, labels) if lab == 1] or [np.zeros(shape, bool)], axis=0)
    neg = np.any([n for n, lab in zip(near, labels) if lab == 0] or [np.zeros(shape, bool)], axis=0)
    return pos & ~neg


def ritm_disks(shape, radius):
    """The same fake model behind RITM's predictor interface (clicks hold (y, x))."""
    def predict(clicker):
        clicks = clicker.get_clicks()
        points = [(c.coords[1], c.coords[0]) for c in clicks]
        return disks(shape, points, [int(c.is_positive) for c in clicks], radius).astype(float)
    return predict


def test_first_click_is_the_deepest_point_of_the_object():
    gt = np.zeros((9, 12), dtype=bool)
    gt[1:8, 2:9] = True  # 7 x 7 square: its centre (4, 5) is 4 px from the outside
    assert next_click(gt, np.zeros_like(gt)) == Click(y=4, x=5, positive=True)


def test_false_positive_gets_a_negative_click_and_the_border_counts_as_boundary():
    gt = np.zeros((10, 10), dtype=bool)
    gt[4:6, 4:6] = True
    pred = gt.copy()
    pred[:, :5] = True  # a 10 x 5 false positive along the left border; the miss: nothing
    click = next_click(gt, pred)
    assert not click.positive
    # padded: the left border is a boundary, so the deepest column is 2, not 0
    assert click.x == 2


def test_clicked_pixels_are_not_clicked_again():
    gt = np.zeros((9, 9), dtype=bool)
    gt[2:7, 2:7] = True
    clicked = np.zeros_like(gt)
    clicked[4, 4] = True
    click = next_click(gt, np.zeros_like(gt), clicked)
    assert (click.y, click.x) != (4, 4) and click.positive and gt[click.y, click.x]


def test_a_perfect_prediction_gets_a_negative_click_on_the_first_pixel_as_ritm():
    gt = np.zeros((5, 5), dtype=bool)
    gt[1:4, 1:4] = True
    assert next_click(gt, gt) == Click(0, 0, False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("stop", [True, False])
def test_clicks_and_ious_equal_ritm(seed, stop):
    rng = np.random.default_rng(seed)
    gt = blob(rng)
    radius = int(rng.integers(2, 6))
    calls = []

    def predict(points, labels):
        calls.append((points.copy(), labels.copy()))
        return disks(gt.shape, points, labels, radius)

    ours = click_ious(gt, predict, stop_iou=0.9 if stop else None)
    clicks, theirs, _ = ritm.evaluate_sample(gt, ritm_disks(gt.shape, radius), max_iou_thr=0.9 if stop else 2.0,
                                             min_clicks=5)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    points, labels = calls[-1]
    assert points.astype(int).tolist() == [[int(c.coords[1]), int(c.coords[0])] for c in clicks]
    assert labels.tolist() == [int(c.is_positive) for c in clicks]


def test_ignored_pixels_are_neither_clicked_nor_scored_as_ritm():
    rng = np.random.default_rng(7)
    gt = blob(rng)
    ignore = blob(rng, density=0.1)
    ritm_gt = np.where(ignore, -1, gt.astype(int))
    ours = click_ious(gt, lambda p, lab: disks(gt.shape, p, lab, 3), ignore=ignore, stop_iou=None)
    clicker = ritm.Clicker(gt_mask=ritm_gt)
    pred = np.zeros_like(gt)
    for k in range(20):
        clicker.make_next_click(pred)
        pred = ritm_disks(gt.shape, 3)(clicker) > 0.49
        assert ours[k] == pytest.approx(ritm.get_iou(ritm_gt, pred), abs=1e-12)


def test_a_model_that_is_right_after_k_clicks_needs_k_clicks():
    gt = np.zeros((20, 20), dtype=bool)
    gt[5:15, 5:15] = True
    for k in (1, 4, 12):
        ious = click_ious(gt, lambda p, lab, k=k: gt if len(p) >= k else np.zeros_like(gt))
        assert number_of_clicks(ious, 0.9) == k
        assert len(ious) == max(k, 5)  # stops once IoU >= 90% and mIoU@5 is known
    never = click_ious(gt, lambda p, lab: np.zeros_like(gt))
    assert len(never) == 20 and number_of_clicks(never, 0.85) == 20


def test_stopping_early_changes_no_metric():
    rng = np.random.default_rng(3)
    early, full = [], []
    for _ in range(6):
        gt = blob(rng)

        def growing(points, labels, gt=gt):  # the object within a disk growing with each click
            return gt & disks(gt.shape, points[:1], labels[:1], 2 * len(points))

        early.append(click_ious(gt, growing))
        full.append(click_ious(gt, growing, stop_iou=None))
    assert any(5 < len(e) < 20 for e in early)  # some runs did stop early, after click 5
    assert summarize(early) == summarize(full)


def test_metrics_equal_ritm_noc_and_miou():
    rng = np.random.default_rng(11)
    all_ious = [rng.uniform(0.5, 1.0, 20) for _ in range(7)]
    all_ious[2][:] = 0.3  # never reaches: counts max clicks
    metrics = summarize(all_ious)
    noc, over_max = ritm.compute_noc_metric(all_ious, iou_thrs=[0.85, 0.90], max_clicks=20)
    assert [metrics["NoC_85"], metrics["NoC_90"]] == pytest.approx(noc, abs=1e-12)
    assert [metrics["over_max_85"], metrics["over_max_90"]] == over_max
    miou = ritm.mean_ious(all_ious)
    assert [metrics["mIoU_1"], metrics["mIoU_3"], metrics["mIoU_5"]] == pytest.approx(miou[[0, 2, 4]])


def test_noc_by_hand():
    assert number_of_clicks(np.array([0.5, 0.86, 0.91]), 0.85) == 2
    assert number_of_clicks(np.array([0.5, 0.86, 0.91]), 0.90) == 3
    assert number_of_clicks(np.array([0.5, 0.6]), 0.90) == 20
    # exactly on the threshold counts, here and in RITM (whose IoUs are float32)
    assert number_of_clicks(np.array([9 / 10]), 0.90) == 1
    assert ritm.compute_noc_metric([np.array([9 / 10], dtype=np.float32)], [0.90])[0] == [1]


def test_per_category_and_overall():
    a, b = np.array([0.9] * 5), np.array([0.5] * 20)
    overall, per_category = summarize_by_category([("cat", a), ("dog", b), ("cat", a)])
    assert per_category["cat"]["NoC_90"] == 1 and per_category["dog"]["NoC_90"] == 20
    assert overall["NoC_90"] == pytest.approx((1 + 20 + 1) / 3)
    assert overall["mIoU_1"] == pytest.approx((0.9 * 2 + 0.5) / 3)


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(Sam3LoraError, match="ground-truth mask is empty"):
        click_ious(np.zeros((4, 4), bool), lambda p, lab: np.zeros((4, 4), bool))
    gt = np.ones((4, 4), bool)
    with pytest.raises(Sam3LoraError, match=r"mask of shape \(1, 4, 4\) for an object of shape \(4, 4\)"):
        click_ious(gt, lambda p, lab: np.zeros((1, 4, 4), bool))
    with pytest.raises(Sam3LoraError, match="no objects"):
        summarize([])
