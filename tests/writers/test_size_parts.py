"""size_parts: how a batch is cut into messages a service takes."""

from __future__ import annotations

import pytest

from writers.base import RecordTooLargeError, size_parts


def test_records_fill_each_message_up_to_the_limit_in_order():
    assert size_parts([4, 4, 4, 4, 4], 10) == [range(0, 2), range(2, 4), range(4, 5)]
    assert size_parts([10, 1], 10) == [range(0, 1), range(1, 2)]
    assert size_parts([3], 10) == [range(0, 1)]
    assert size_parts([], 10) == []


def test_separators_count_between_records_only():
    # 4 + 1 + 4 = 9 fits in 9; a third record would need 14.
    assert size_parts([4, 4, 4], 9, separator=1) == [range(0, 2), range(2, 3)]
    assert size_parts([5, 4], 9, separator=1) == [range(0, 1), range(1, 2)]


def test_a_record_alone_past_the_limit_is_refused_before_any_message():
    with pytest.raises(RecordTooLargeError) as refused:
        size_parts([2, 3, 11, 2], 10)
    assert (refused.value.index, refused.value.length) == (2, 11)
