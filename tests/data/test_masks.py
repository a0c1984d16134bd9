"""Compact masks: COCO segmentations to RLE, decoding, boxes, and mapping onto the input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from sam3_lora.data.masks import decode_stack, mask_to_box, masks_to_input, rles_to_input
from sam3_lora.data.rle import decode, to_rle
from sam3_lora.data.transforms import Geometry

RECT = [[10, 20, 50, 20, 50, 40, 10, 40]]  # x 10..50, y 20..40


def test_polygon_to_rle_decodes_to_the_rectangle():
    mask = decode(to_rle(RECT, 60, 80))
    assert mask.shape == (60, 80) and mask.dtype == np.uint8
    assert mask.sum() == 40 * 20
    assert mask_to_box(mask).tolist() == [10, 20, 50, 40]


def test_flat_polygon_and_multiple_polygons_merge():
    flat = decode(to_rle(RECT[0], 60, 80))
    assert flat.sum() == 800
    two = decode(to_rle([RECT[0], [60, 0, 70, 0, 70, 10, 60, 10]], 60, 80))
    assert two.sum() == 800 + 100


def test_uncompressed_and_compressed_rle_round_trip():
    mask = np.zeros((30, 40), dtype=np.uint8, order="F")
    mask[5:15, 8:20] = 1
    compressed = coco_mask.encode(mask)
    as_str = {"size": [30, 40], "counts": compressed["counts"].decode("ascii")}
    # Uncompressed COCO RLE: column-major run lengths starting with zeros.
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    for segmentation in (compressed, as_str, {"size": [30, 40], "counts": runs}):
        rle = to_rle(segmentation, 30, 40)
        assert isinstance(rle["counts"], bytes)
        np.testing.assert_array_equal(decode(rle), mask)


@pytest.mark.parametrize("segmentation", [None, [], [[1, 2, 3, 4]], [[1, 2, 3, 4, 5]]])
def test_no_usable_mask_is_box_only(segmentation):
    # A 4-number "polygon" would be read by pycocotools as a box; it must not be.
    assert to_rle(segmentation, 10, 10) is None


def test_rle_of_another_size_is_rejected():
    rle = coco_mask.encode(np.ones((5, 5), dtype=np.uint8, order="F"))
    with pytest.raises(ValueError, match="size"):
        to_rle(rle, 6, 5)


def test_mask_to_box_stack_and_empty():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    assert mask_to_box(masks).tolist() == [[3, 2, 9, 5], [0, 0, 0, 0]]
    assert mask_to_box(torch.zeros(0, 4, 4)).shape == (0, 4)


def test_decode_stack_shapes():
    rle = to_rle(RECT, 60, 80)
    assert decode_stack([rle, rle], 60, 80).shape == (2, 60, 80)
    assert decode_stack([], 60, 80).shape == (0, 60, 80)


def test_identity_geometry_keeps_the_mask():
    mask = torch.from_numpy(decode(to_rle(RECT, 64, 64)))[None]
    out = masks_to_input(mask, Geometry((64, 64), (64, 64), 64), 64)
    assert out.dtype == torch.bool and torch.equal(out, mask.bool())


def test_flip_and_padding():
    mask = torch.zeros(1, 40, 80, dtype=torch.uint8)
    mask[0, :, :20] = 1  # left quarter
    geometry = Geometry((40, 80), (40, 80), 80, flipped=True)  # content: top half of canvas
    out = masks_to_input(mask, geometry, 80)[0]
    assert out[:40, 60:].all() and not out[:40, :60].any()  # now the right quarter
    assert not out[40:].any()  # padding


def test_box_only_objects_get_empty_masks():
    geometry = Geometry((60, 80), (60, 80), 84)
    out = rles_to_input([None, to_rle(RECT, 60, 80), None], geometry, 24)
    assert out.shape == (3, 24, 24)
    assert not out[0].any() and out[1].any() and not out[2].any()
    assert rles_to_input([], geometry, 24).shape == (0, 24, 24)


@settings(max_examples=60, deadline=None, database=None)
@given(
    orig=st.tuples(st.integers(20, 120), st.integers(20, 120)),
    rect=st.tuples(st.floats(0, 0.6), st.floats(0, 0.6), st.floats(0.2, 0.4), st.floats(0.2, 0.4)),
    long_side=st.integers(40, 112),
    flipped=st.booleans(),
)
def test_mask_follows_the_box_mapping(orig, rect, long_side, flipped):
    """The mapped box and the box of the mapped mask agree within one mask pixel.

    Integer rectangles, so that rasterising the polygon itself is exact.
    """
    height, width = orig
    x, y = round(rect[0] * width), round(rect[1] * height)
    w, h = round(rect[2] * width), round(rect[3] * height)
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    scale = long_side / max(height, width)
    content = (max(1, round(height * scale)), max(1, round(width * scale)))
    geometry = Geometry((height, width), content, 112, flipped)
    mask_size = 32
    mask = torch.from_numpy(decode(to_rle(polygon, height, width)))[None]
    mapped = masks_to_input(mask, geometry, mask_size)
    box = geometry.map_boxes(torch.tensor([[x, y, w, h]]))[0] * mask_size / 112
    if mapped.any():
        assert (mask_to_box(mapped[0]) - box).abs().max() <= 1.0 + 1e-4
