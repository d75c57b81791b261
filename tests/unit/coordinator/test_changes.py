"""Catch-up's pure decisions: hash diff, clock margin, compare-from instant, sweep windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coordinator.changes import compare_from, diff_hashes, effective_margin, sweep_window


def test_diff_classifies_changed_created_deleted_and_blank() -> None:
    source = {1: "a", 2: "b2", 3: "c", 5: None, 6: None}
    shadow = {1: "a", 2: "b", 4: "d", 5: "e"}
    d = diff_hashes(source, shadow)
    assert d.changed == [2]
    assert d.created == [3]
    assert sorted(d.deleted) == [4, 5]  # 4 gone from the source, 5 now blank
    assert d.found == 4


def test_diff_of_equal_maps_is_empty() -> None:
    assert diff_hashes({1: "a"}, {1: "a"}).found == 0


def test_margin_widens_only_beyond_the_setting() -> None:
    assert effective_margin(300, None) == 300
    assert effective_margin(300, -120.0) == 300
    assert effective_margin(60, -500.0) == 560.0


def test_compare_from_uses_later_of_read_and_previous_pass_minus_margin() -> None:
    read = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert compare_from(read, None, 60) == read - timedelta(seconds=60)
    later = read + timedelta(hours=1)
    assert compare_from(read, later, 60) == later - timedelta(seconds=60)
    assert compare_from(read, read - timedelta(hours=1), 0) == read
    assert compare_from(None, later, 60) is None  # never read: compare everything
    naive = datetime(2024, 1, 1, 12, 0)
    assert compare_from(naive, None, 0) == read


def test_sweep_window_budgets_and_wraps() -> None:
    ranges = [(0, 500), (1, 500), (2, 500), (3, 500)]
    assert sweep_window(ranges, 0, 1000) == ([0, 1], 2, False)
    assert sweep_window(ranges, 2, 1000) == ([2, 3], 0, True)
    assert sweep_window(ranges, 0, 10_000) == ([0, 1, 2, 3], 0, True)
    # a range larger than the budget is still scanned whole, one per pass
    assert sweep_window(ranges, 1, 10) == ([1], 2, False)
    # a start past the end (ranges changed) starts over
    assert sweep_window(ranges, 9, 1000) == ([0, 1], 2, False)
