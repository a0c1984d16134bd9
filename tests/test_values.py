import math

import pytest

from sam3_lora.values import is_finite, is_int, is_number


@pytest.mark.parametrize("value, number, finite", [
    (1, True, True), (2.5, True, True), (True, False, False), (False, False, False),
    (math.nan, True, False), (math.inf, True, False), (-math.inf, True, False),
    (10**400, True, False), ("1", False, False), (None, False, False),
])
def test_one_rule_for_json_numbers(value, number, finite):
    assert is_number(value) is number
    assert is_finite(value) is finite


def test_bool_is_not_an_int():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
