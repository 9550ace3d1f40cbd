"""The one percentile every benchmark reports (ops/benchkit.py): nearest rank."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.benchkit import Table, percentile

values = st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200)
quantile = st.floats(min_value=0.0, max_value=1.0)


def test_nearest_rank_on_a_known_list() -> None:
    ten = [float(v) for v in range(10, 0, -1)]  # 10 … 1, unsorted on purpose
    assert percentile(ten, 0.5) == 5.0  # rank ceil(5) = 5
    assert percentile(ten, 0.51) == 6.0  # rank ceil(5.1) = 6
    assert percentile(ten, 0.99) == 10.0
    assert percentile(ten, 0.0) == 1.0
    assert percentile(ten, 1.0) == 10.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="within"):
        percentile(ten, 99)


@given(values, quantile)
def test_a_percentile_is_a_measured_value_with_at_least_q_at_or_below_it(
    xs: list[float], q: float
) -> None:
    p = percentile(xs, q)
    assert p in xs
    at_or_below = sum(1 for x in xs if x <= p)
    assert at_or_below >= q * len(xs)
    # …and it is the smallest such value: one step down holds fewer than q.
    below = sum(1 for x in xs if x < p)
    assert below < max(q * len(xs), 1)


@given(values, quantile, quantile)
def test_percentiles_grow_with_q(xs: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert percentile(xs, lo) <= percentile(xs, hi)


def test_table_aligns_columns_and_rejects_a_short_row() -> None:
    table = Table(["measure", "value"], right=[1])
    table.add("a", "1")
    table.add("longer", "1,000")
    assert table.render().splitlines() == [
        "measure  value",
        "-------  -----",
        "a            1",
        "longer   1,000",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        table.add("only one")
