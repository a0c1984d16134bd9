"""Vectorised validation of compressed COCO RLE strings, before pycocotools ever sees them.

pycocotools trusts its input: a malformed ``counts`` string makes ``mask.iou`` loop for ever
or ``decode`` return uninitialised memory, and ``area``/``toBbox`` return nonsense. A string
is valid when pycocotools' ``rleFrString`` decodes it to non-negative run lengths that sum to
exactly ``height * width``. Checking 100,000 strings one by one in Python takes seconds, so
this module decodes all of them at once with numpy.

The format (pycocotools ``maskApi.c``): characters are ``'0' + c`` with ``0 <= c < 64``; each
run length is a little-endian group of 5-bit chunks, bit 0x20 meaning "another chunk
follows" and bit 0x10 of the last chunk its sign; from the fourth run on (index >= 3) a run
is stored as the difference to the run two places before it.
"""

from __future__ import annotations

import numpy as np

_MAX_CHUNKS = 12
"""Chunks per run length. 12 x 5 = 60 bits fits int64; a valid run needs at most 7."""


def invalid_rle_strings(counts: list[bytes], areas: np.ndarray) -> np.ndarray:
    """Indices of the ``counts`` strings that do not decode to exactly ``areas[i]`` pixels.

    ``counts``: n compressed RLE strings (bytes). ``areas``: (n,) int, height * width of each.
    Returns a sorted int array of the bad indices (empty when all are valid).
    """
    n = len(counts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.fromiter(map(len, counts), dtype=np.int64, count=n)
    raw = np.frombuffer(b"".join(counts), dtype=np.uint8)
    if raw.size == 0:  # only empty strings: valid only for 0-pixel images
        return np.flatnonzero(np.asarray(areas) != 0)
    bad = np.zeros(n, dtype=bool)
    owner = np.repeat(np.arange(n, dtype=np.int32), lengths)  # string of every character
    bad[owner[(raw < 48) | (raw > 111)]] = True
    chars = (raw - 48) & 63  # uint8, wraps for the bad characters flagged above
    last_char = np.cumsum(lengths)[lengths > 0] - 1
    more = (chars & 0x20) != 0
    # A string ending on "another chunk follows" makes rleFrString read past its end.
    bad[owner[last_char[more[last_char]]]] = True
    group_end = ~more
    group_end[last_char] = True  # never let a run straddle two strings
    runs, run_owner = _run_values(chars, group_end, owner, bad)
    cnts = _undo_delta_coding(runs, run_owner, n)
    bad[run_owner[(cnts < 0) | (cnts >= 2**32)]] = True
    total = np.bincount(run_owner, weights=cnts.astype(np.float64), minlength=n)
    bad |= total != np.asarray(areas, dtype=np.float64)
    return np.flatnonzero(bad)


def _run_values(chars: np.ndarray, group_end: np.ndarray, owner: np.ndarray,
                bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Characters -> (stored value of every run, string index of every run), in order."""
    is_start = np.empty_like(group_end)
    is_start[0], is_start[1:] = True, group_end[:-1]
    starts = np.flatnonzero(is_start)
    run_len = np.diff(np.append(starts, chars.size))
    chunk = np.arange(chars.size) - np.repeat(starts, run_len)  # position inside its run
    too_long = run_len > _MAX_CHUNKS
    if too_long.any():
        bad[owner[starts[too_long]]] = True
        chunk = np.minimum(chunk, _MAX_CHUNKS - 1)
        run_len = np.minimum(run_len, _MAX_CHUNKS)
    values = np.add.reduceat((chars & 0x1F).astype(np.int64) << (5 * chunk), starts)
    negative = (chars[starts + run_len - 1] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * run_len[negative])  # x |= -1 << 5k
    # A valid stored value is a difference of two runs below 2**32; bounding them also keeps
    # the running sums below from overflowing.
    huge = np.abs(values) >= 2**33
    if huge.any():
        bad[owner[starts[huge]]] = True
        values[huge] = 0
    return values, owner[starts]


def _undo_delta_coding(runs: np.ndarray, run_owner: np.ndarray, n: int) -> np.ndarray:
    """Stored values -> run lengths: cnts[j] = x[j] + cnts[j - 2] for j >= 3.

    So within one string, odd runs are the running sum of the odd values, even runs from
    index 2 on that of the even values from index 2, and run 0 is its own value. Running sums
    over all strings at once, minus each string's starting offset, avoid any sorting.
    """
    per_string = np.bincount(run_owner, minlength=n)
    string_first = np.minimum(np.cumsum(per_string) - per_string, runs.size - 1)
    index = np.arange(runs.size) - np.repeat(string_first, per_string)  # j in its string
    odd = (index & 1).astype(bool)
    even = ~odd
    even &= index >= 2
    odd_sum, even_sum = np.cumsum(runs * odd), np.cumsum(runs * even)
    # Run 0 is in neither chain, so the sums at a string's run 0 are those before the string.
    odd_sum -= np.repeat(odd_sum[string_first], per_string)
    even_sum -= np.repeat(even_sum[string_first], per_string)
    return runs * (index == 0) + odd_sum * odd + even_sum * even
