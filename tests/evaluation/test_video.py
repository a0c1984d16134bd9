"""DAVIS J / F / J&F against a transcription of the official code (tests/evaluation/davis_reference.py)."""

import numpy as np
import pytest
from scipy import ndimage

from sam3_lora.errors import Sam3LoraError
from sam3_lora.evaluation.video import (
    ObjectScores,
    boundary_map,
    boundary_measure,
    boundary_radius,
    disk,
    evaluate_sequence,
    exclusive_masks,
    region_similarity,
    statistics,
    summarize,
    summarize_by_group,
    video_metrics,
)
from tests.evaluation import davis_reference as davis

# The reference divides 0 by 0 before replacing the result by 1 (both masks empty).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")


def blobs(rng, shape, density=0.5, smooth=2.0):
    """Random masks with real shapes (smoothed noise thresholded), not salt-and-pepper."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0,) * (len(shape) - 2) + (smooth, smooth))
    return noise > np.quantile(noise, 1 - density)


def perturbed(rng, gt, flip=0.05):
    """A prediction near ``gt``: shifted by a pixel and with some blobs flipped."""
    pred = np.roll(gt, shift=rng.integers(-2, 3), axis=-1)
    return pred ^ blobs(rng, gt.shape, density=flip, smooth=1.0)


def test_disk_is_scikit_images():
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).astype(int).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                            [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    for r in range(6):
        assert np.array_equal(disk(r), davis._skimage_disk(float(r)).astype(bool))


@pytest.mark.parametrize("seed", range(4))
def test_dilation_by_scipy_equals_the_cv2_definition(seed):
    rng = np.random.default_rng(seed)
    boundary = boundary_map(blobs(rng, (40, 57)))
    for r in (1, 3, 5):
        ours = ndimage.binary_dilation(boundary, structure=disk(r))
        theirs = davis._cv2_dilate(boundary.astype(np.uint8), davis._skimage_disk(float(r)))
        assert np.array_equal(ours, theirs.astype(bool))


def test_boundary_radius_is_davis():
    assert boundary_radius(480, 854) == 8  # ceil(0.008 * 979.6): DAVIS 480p
    assert boundary_radius(50, 70) == 1
    assert boundary_radius(50, 70, bound_th=3) == 3
    with pytest.raises(ValueError, match="bound_th 2.5"):
        boundary_radius(50, 70, bound_th=2.5)


@pytest.mark.parametrize("seed", range(6))
def test_boundary_map_equals_seg2bmap(seed):
    rng = np.random.default_rng(seed)
    mask = blobs(rng, (int(rng.integers(2, 40)), int(rng.integers(2, 40))), density=rng.uniform(0.1, 0.9))
    assert np.array_equal(boundary_map(mask), davis._seg2bmap(mask))


@pytest.mark.parametrize("seed", range(8))
def test_per_frame_j_and_f_equal_davis(seed):
    rng = np.random.default_rng(seed)
    shape = (6, int(rng.integers(20, 90)), int(rng.integers(20, 130)))
    gt = blobs(rng, shape, density=rng.uniform(0.05, 0.5))
    pred = perturbed(rng, gt)
    gt[1] = False  # object absent: prediction scored against nothing
    pred[2] = False  # object missed
    gt[3] = pred[3] = False  # both empty: J = F = 1
    void = blobs(rng, shape, density=0.1) if seed % 2 else None
    np.testing.assert_allclose(region_similarity(gt, pred, void), davis.db_eval_iou(gt, pred, void), rtol=0, atol=1e-6)
    np.testing.assert_allclose(boundary_measure(gt, pred, void), davis.db_eval_boundary(gt, pred, void),
                               rtol=0, atol=1e-6)


def test_f_equals_davis_at_davis_resolution():
    """480p frames: the tolerance disk has radius 8, as on the benchmark."""
    rng = np.random.default_rng(0)
    gt = blobs(rng, (2, 480, 854), density=0.2, smooth=12.0)
    pred = perturbed(rng, gt, flip=0.02)
    np.testing.assert_allclose(boundary_measure(gt, pred), davis.db_eval_boundary(gt, pred), rtol=0, atol=1e-6)


def test_j_and_f_by_hand():
    gt = np.zeros((1, 10, 10), dtype=bool)
    gt[0, 2:6, 2:6] = True  # 16 px
    pred = np.zeros_like(gt)
    pred[0, 2:6, 2:4] = True  # 8 px, inside
    assert region_similarity(gt, pred)[0] == 0.5
    assert boundary_measure(gt, gt)[0] == 1.0
    assert boundary_measure(gt, np.zeros_like(gt))[0] == 0.0  # precision 1, recall 0


@pytest.mark.parametrize("frames", [3, 7, 20, 101, 255])
def test_statistics_equal_db_statistics(frames):
    rng = np.random.default_rng(frames)
    values = rng.uniform(0, 1, frames)
    values[rng.integers(0, frames)] = np.nan
    np.testing.assert_allclose(statistics(values), davis.db_statistics(values), rtol=0, atol=1e-12)


def test_statistics_by_hand():
    mean, recall, decay = statistics(np.array([1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0]))
    assert mean == pytest.approx(4.0 / 9)
    assert recall == pytest.approx(4 / 9)  # 1, 1, 0.8, 0.6 > 0.5
    # bins of 9 frames: [0..2], [2..4], [4..6], [6..8] -> mean(1, 1, .8) - mean(0, 0, 0)
    assert decay == pytest.approx(2.8 / 3)


def test_decay_past_256_frames_does_not_wrap():
    values = np.r_[np.ones(150), np.zeros(150)]  # first quarter 1, last quarter 0
    assert statistics(values)[2] == 1.0


def make_dataset(seed):
    rng = np.random.default_rng(seed)
    sequences = {}
    for s in range(3):
        objects, frames = int(rng.integers(1, 4)), int(rng.integers(4, 12))
        shape = (objects, frames, int(rng.integers(24, 60)), int(rng.integers(24, 80)))
        gt = blobs(rng, shape, density=0.2)
        pred = perturbed(rng, gt, flip=rng.uniform(0.01, 0.2))
        if s == 1 and objects > 1:
            pred = pred[:-1]  # an object never predicted
        sequences[f"seq{s}"] = (gt, pred)
    return sequences


@pytest.mark.parametrize("seed", range(3))
def test_sequences_and_global_table_equal_davis(seed):
    sequences = make_dataset(seed)
    objects = [o for name, (gt, pred) in sequences.items() for o in evaluate_sequence(name, gt, pred)]
    reference = davis.evaluate(sequences)
    assert [o.name for o in objects] == list(reference["J"]["M_per_object"])
    for measure in ("J", "F"):
        for field, key in (("mean", "M"), ("recall", "R"), ("decay", "D")):
            ours = [getattr(o, f"{measure.lower()}_{field}") for o in objects]
            np.testing.assert_allclose(ours, reference[measure][key], rtol=0, atol=1e-6)
    table, expected = summarize(objects), davis.global_table(reference)
    assert list(table) == list(expected)
    np.testing.assert_allclose(list(table.values()), list(expected.values()), rtol=0, atol=1e-6)


def test_perfect_predictions_score_one():
    sequences = make_dataset(0)
    objects = [o for name, (gt, _) in sequences.items() for o in evaluate_sequence(name, gt, gt)]
    table = summarize(objects)
    assert table["J&F-Mean"] == table["J-Recall"] == table["F-Recall"] == 1.0
    assert table["J-Decay"] == table["F-Decay"] == 0.0


def test_first_and_last_frames_are_not_scored():
    gt = np.zeros((1, 4, 8, 8), dtype=bool)
    gt[..., 2:5, 2:5] = True
    pred = gt.copy()
    pred[:, [0, 3]] = False  # wrong only where DAVIS does not look
    assert evaluate_sequence("s", gt, pred)[0].j_mean == 1.0
    assert evaluate_sequence("s", gt, pred, drop_first_and_last=False)[0].j_mean == 0.5


def test_mismatched_predictions_are_refused_in_one_line():
    gt = np.zeros((1, 4, 8, 8), dtype=bool)
    with pytest.raises(Sam3LoraError, match=r"sequence cows: predicted masks \(2, 4, 8, 8\) do not fit"):
        evaluate_sequence("cows", gt, np.zeros((2, 4, 8, 8), dtype=bool))
    with pytest.raises(Sam3LoraError, match="no video objects"):
        summarize([])
    assert isinstance(evaluate_sequence("s", gt, gt)[0], ObjectScores)


def test_exclusive_masks_give_each_pixel_to_the_surest_object():
    logits = np.array([[[2.0, 1.0, -1.0, -3.0]], [[1.0, 3.0, -2.0, 0.5]]])   # (2 objects, 1, 4)
    assert exclusive_masks(logits).tolist() == [[[True, False, False, False]], [[False, True, False, True]]]
    assert exclusive_masks(np.zeros((0, 2, 3))).shape == (0, 2, 3)


def test_video_metrics_are_davis_summary_by_group():
    a, b, c = (ObjectScores(f"s_{k}", j, 1.0, 0.1, f, 0.5, -0.2) for k, j, f in ((1, 0.2, 0.4), (2, 0.6, 0.8),
                                                                                (3, 1.0, 1.0)))
    overall, groups = summarize_by_group([("cat", a), ("cat", b), (None, c)])
    davis = summarize([a, b, c])
    assert overall == {"J&F": davis["J&F-Mean"], "J": davis["J-Mean"], "J_recall": 1.0, "J_decay": davis["J-Decay"],
                       "F": davis["F-Mean"], "F_recall": 0.5, "F_decay": davis["F-Decay"], "objects": 3}
    assert list(groups) == ["cat"] and groups["cat"] == video_metrics([a, b])
    assert groups["cat"]["J&F"] == pytest.approx((0.4 + 0.6) / 2)
