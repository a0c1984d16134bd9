import numpy as np
from pycocotools import mask as coco_mask

from sam3_lora.data.rle import as_compressed, as_json, decode, encode, to_rle


def test_a_mask_round_trips_through_both_forms():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    written = encode(mask)
    assert written["size"] == [7, 9] and isinstance(written["counts"], str)
    compressed = as_compressed(written)
    assert isinstance(compressed["counts"], bytes) and as_json(compressed) == written
    assert as_compressed(compressed) == compressed and as_json(written) == written
    assert np.array_equal(decode(compressed).astype(bool), mask)
    assert coco_mask.area(compressed) == 15


def test_any_segmentation_becomes_one_compressed_rle():
    polygon = to_rle([[3, 2, 8, 2, 8, 5, 3, 5]], 7, 9)
    from_json = to_rle(encode(decode(polygon).astype(bool)), 7, 9)
    assert from_json == polygon and to_rle([], 7, 9) is None and to_rle([[1, 1, 2, 2]], 7, 9) is None
