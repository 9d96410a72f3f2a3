"""The shared bounded map: what it keeps, what it drops, and in which order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_shared.bounded import BoundedMap

pytestmark = pytest.mark.unit


def test_storing_past_the_size_drops_the_oldest_stored() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m["a"] = 1
    m["b"] = 2
    m["c"] = 3
    assert list(m.items()) == [("b", 2), ("c", 3)]


def test_storing_a_key_again_makes_it_the_newest() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m["a"] = 1
    m["b"] = 2
    m["a"] = 10
    m["c"] = 3
    assert list(m) == ["a", "c"]


def test_touch_makes_a_key_the_newest_and_plain_reads_do_not() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m["a"] = 1
    m["b"] = 2
    assert m["a"] == 1 and m.get("a") == 1
    assert m.oldest() == "a"
    assert m.touch("a") == 1
    assert m.oldest() == "b"
    assert m.touch("missing") is None


def test_a_map_of_size_zero_keeps_nothing() -> None:
    m: BoundedMap[str, int] = BoundedMap(0)
    m["a"] = 1
    assert len(m) == 0 and m.oldest() is None


@given(st.integers(min_value=1, max_value=8), st.lists(st.integers(0, 20), max_size=60))
def test_it_holds_the_newest_distinct_keys_up_to_its_size(size: int, keys: list[int]) -> None:
    m: BoundedMap[int, int] = BoundedMap(size)
    for i, key in enumerate(keys):
        m[key] = i
    newest: list[int] = []
    for key in reversed(keys):
        if key not in newest:
            newest.append(key)
    assert list(m) == list(reversed(newest[:size]))
