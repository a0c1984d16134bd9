"""The vectorised RLE string check agrees with a plain decoder."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from sam3_lora.data.rle_check import invalid_rle_strings

# --------------------------------------------------------------- RLE string checking


def _decode_counts(s: bytes) -> list[int] | None:
    """pycocotools' rleFrString in plain Python; None where it would read past the end."""
    cnts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s) or not 48 <= s[p] < 112:
                return None
            c = s[p] - 48
            x |= (c & 0x1F) << 5 * k
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        cnts.append(x + cnts[-2] if len(cnts) > 2 else x)
    return cnts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=12).map(lambda b: bytes(48 + v % 70 for v in b)),
                          st.integers(0, 40)), min_size=1, max_size=20))
def test_rle_check_agrees_with_a_plain_decoder(items):
    strings, areas = zip(*items, strict=True)
    expected = [i for i, (s, a) in enumerate(items)
                if (c := _decode_counts(s)) is None or any(v < 0 or v >= 2**32 for v in c)
                or sum(c) != a]
    assert invalid_rle_strings(list(strings), np.array(areas)).tolist() == expected


def test_rle_check_accepts_real_encodings():
    rng = np.random.default_rng(0)
    masks = [(rng.random((h, w)) < rng.random()).astype(np.uint8)
             for h, w in rng.integers(1, 30, (200, 2))]
    strings = [coco_mask.encode(np.asfortranarray(m))["counts"] for m in masks]
    assert invalid_rle_strings(strings, np.array([m.size for m in masks])).size == 0
