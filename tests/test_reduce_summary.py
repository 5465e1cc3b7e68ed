"""Statistics of the built-in reduce: mergeable part stats and the histogram (worked examples)."""

from __future__ import annotations

import pytest

from microprocess.reduce.summary import Histogram, NumericStats, PartStats, nice_width


def stats_of(*values: object) -> NumericStats:
    s = NumericStats()
    for v in values:
        s.add(v)
    return s


@pytest.mark.parametrize(
    ("raw", "integers", "width"),
    [(4.5, True, 5), (12, True, 20), (1, True, 1), (0.3, True, 1), (0.085, False, 0.1), (0.3, False, 0.5)],
)
def test_nice_width_is_the_next_1_2_5_step(raw: float, integers: bool, width: float) -> None:
    assert nice_width(raw, integers=integers) == pytest.approx(width)


def test_histogram_worked_example_over_two_parts() -> None:
    # GIVEN days overdue 0, 1, 4, 5, 9 in one shard and 10, 23, 45 in another, plus a row without a number
    part_a, part_b = stats_of(0, 1, 4, 5, 9), stats_of(10, 23, 45, None, "12")
    # WHEN the parts' ranges are merged and finalize bins every value
    merged = NumericStats()
    merged.merge(part_a)
    merged.merge(part_b)
    hist = Histogram(merged)
    for v in (0, 1, 4, 5, 9, 10, 23, 45, None, "12"):
        hist.add(v)
    # THEN span 45 / 10 bins -> width 5 from 0: nine bins, the last one holding 45 itself
    assert hist.bins() == [
        {"from": 0, "to": 5, "count": 3},
        {"from": 5, "to": 10, "count": 2},
        {"from": 10, "to": 15, "count": 1},
        {"from": 15, "to": 20, "count": 0},
        {"from": 20, "to": 25, "count": 1},
        {"from": 25, "to": 30, "count": 0},
        {"from": 30, "to": 35, "count": 0},
        {"from": 35, "to": 40, "count": 0},
        {"from": 40, "to": 45, "count": 1},
    ]
    # AND the range statistics count the numbers only (a string is not a number)
    assert (merged.count, merged.low, merged.high, merged.skipped, merged.mean) == (8, 0, 45, 2, 12.125)


def test_histogram_of_fractions_puts_edge_values_in_the_upper_bin() -> None:
    # GIVEN 0.12, 0.5 and 0.97: width 0.1 from 0.1 (0.5 sits exactly on an edge)
    hist = Histogram(stats_of(0.12, 0.5, 0.97))
    for v in (0.12, 0.5, 0.97):
        hist.add(v)
    bins = hist.bins()
    # THEN nine bins 0.1..1.0 and 0.5 counts in [0.5, 0.6)
    assert [b["from"] for b in bins] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def test_histogram_of_one_value_is_one_bin_and_of_none_is_empty() -> None:
    one = Histogram(stats_of(7, 7, 7))
    for _ in range(3):
        one.add(7)
    assert one.bins() == [{"from": 7, "to": 7, "count": 3}]
    assert Histogram(stats_of(None, "x")).bins() == []


def test_part_stats_merge_and_round_trip_through_json() -> None:
    # GIVEN two parts: one with a retried success, one with a failure
    a, b = PartStats(), PartStats()
    a.add({"task_id": "t1", "state": "SUCCEEDED", "attempts": 2}, "2026-12-01T05:00:02.000000Z", "invoice_id")
    b.add(
        {"task_id": "t2", "state": "FAILED", "attempts": 3, "error": "boom", "invoice_id": "I2"},
        "2026-12-01T05:00:01.000000Z",
        "invoice_id",
    )
    b.columns = ["x"]
    # WHEN merged after a JSON round trip
    total = PartStats.from_dict(a.to_dict())
    total.merge(PartStats.from_dict(b.to_dict()))
    # THEN counts add up and the time window spans both
    assert (total.rows, total.succeeded, total.failed, total.attempts, total.retried, total.max_attempts) == (
        2,
        1,
        1,
        5,
        2,
        3,
    )
    assert total.first_finished_at == "2026-12-01T05:00:01.000000Z"
    assert total.last_finished_at == "2026-12-01T05:00:02.000000Z"
    assert total.failures == [{"task_id": "t2", "item_id": "I2", "attempts": 3, "error": "boom"}]
    assert total.columns == ["x"]
