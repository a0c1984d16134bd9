"""CLEAR MOT's identity counts (evaluation.tracking), on hand-made masklets."""

import numpy as np
import pytest

from sam3_lora.evaluation.tracking import Frame, TrackingCounts, count_identities, mask_ious

SIZE = 20


def square(x: int, y: int, side: int = 6) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y:y + side, x:x + side] = True
    return mask


def frame(gt: dict[int, np.ndarray], pred: dict[int, np.ndarray]) -> Frame:
    def stack(masks):
        return np.stack(list(masks.values())) if masks else np.zeros((0, SIZE, SIZE), bool)
    return Frame(np.array(list(gt), int), stack(gt), np.array(list(pred), int), stack(pred))


A, B = square(0, 0), square(12, 12)


def test_a_perfect_track_has_no_switch():
    counts = count_identities([frame({1: A, 2: B}, {7: A, 8: B})] * 3)
    assert counts == TrackingCounts(objects=6, matches=6, misses=0, false_positives=0, id_switches=0)
    assert counts.mota == 1.0


def test_swapped_identities_count_one_switch_per_object():
    """Frames 1-2 track A as 7 and B as 8; frame 3 gives each object the other's id."""
    frames = [frame({1: A, 2: B}, {7: A, 8: B})] * 2 + [frame({1: A, 2: B}, {7: B, 8: A})]
    counts = count_identities(frames)
    assert (counts.matches, counts.id_switches) == (6, 2)
    assert counts.mota == pytest.approx(1 - 2 / 6)


def test_an_object_lost_and_found_by_the_same_id_is_no_switch_but_a_new_id_is():
    lost = frame({1: A}, {})
    same = count_identities([frame({1: A}, {7: A}), lost, frame({1: A}, {7: A})])
    other = count_identities([frame({1: A}, {7: A}), lost, frame({1: A}, {9: A})])
    assert (same.misses, same.id_switches) == (1, 0)
    assert (other.misses, other.id_switches) == (1, 1)   # remembered past the gap, as CLEAR MOT does


def test_a_kept_identity_wins_over_a_better_overlap():
    """Frame 2: prediction 9 overlaps object 1 better than 7 does, but 7 still passes the
    threshold, so 7 keeps it (no switch) and 9 is a false positive."""
    near = square(1, 0)   # IoU with A: 30 / 42 = 0.71
    counts = count_identities([frame({1: A}, {7: A}), frame({1: A}, {7: near, 9: A})])
    assert (counts.matches, counts.false_positives, counts.id_switches) == (2, 1, 0)


def test_overlaps_under_the_threshold_never_match():
    far = square(4, 4)   # IoU with A: 4 / 68
    counts = count_identities([frame({1: A}, {7: far})])
    assert (counts.matches, counts.misses, counts.false_positives) == (0, 1, 1)
    assert mask_ious(A[None], far[None])[0, 0] == pytest.approx(4 / 68)


def test_the_assignment_matches_as_many_objects_as_it_can():
    """Object 1 overlaps both predictions, object 2 only the first: one to one, both match."""
    wide = np.zeros((SIZE, SIZE), bool)
    wide[0:6, 0:9] = True              # prediction 7: A plus 3 columns
    gt2 = np.zeros((SIZE, SIZE), bool)
    gt2[0:6, 1:9] = True               # object 2: mostly inside prediction 7
    counts = count_identities([frame({1: A, 2: gt2}, {7: wide, 8: A})])
    assert counts.matches == 2


def test_counts_add_over_videos_and_mota_is_nan_without_objects():
    one = count_identities([frame({1: A}, {7: A})])
    assert (one + one).objects == 2
    assert np.isnan(TrackingCounts().mota)
