"""OffsetTracker: what a log consumer may commit, and where it reads on after a rebalance."""

from __future__ import annotations

from asyncq.brokers._offsets import OffsetTracker


def taken(*offsets: int, partition: str = "p") -> OffsetTracker[str]:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.take(partition, offset)
    return tracker


def test_the_commit_point_is_the_lowest_unfinished_offset() -> None:
    tracker = taken(0, 1, 2, 3)
    tracker.finish("p", 1)
    tracker.finish("p", 3)
    assert tracker.commits() == {"p": 0}
    tracker.finish("p", 0)
    assert tracker.commits() == {"p": 2}
    tracker.finish("p", 2)
    assert tracker.commits() == {"p": 4}


def test_commits_reports_only_points_that_moved() -> None:
    tracker = taken(5, 6)
    tracker.committed(tracker.commits())
    assert tracker.commits() == {}
    tracker.finish("p", 6)
    assert tracker.commits() == {}  # 5 still runs
    tracker.finish("p", 5)
    assert tracker.commits() == {"p": 7}


def test_position_is_one_past_the_highest_offset_taken() -> None:
    tracker = taken(3, 4, 5)
    tracker.finish("p", 5)
    assert tracker.position("p") == 6
    assert tracker.position("other") is None


def test_rewind_puts_back_offsets_never_handed_out() -> None:
    tracker = taken(0, 1, 2, 3, 4)  # 0 and 1 handed out; 2, 3, 4 still buffered
    tracker.finish("p", 1)
    tracker.rewind("p", 2)
    assert tracker.position("p") == 2
    assert tracker.commits() == {"p": 0}  # 0 still runs
    tracker.finish("p", 0)
    assert tracker.commits() == {"p": 2}  # not past the records put back
    tracker.take("p", 2)
    assert tracker.position("p") == 3
    assert tracker.commits() == {"p": 2}


def test_rewind_of_an_unknown_partition_or_past_the_position_changes_nothing() -> None:
    tracker = taken(0, 1)
    tracker.rewind("other", 0)
    tracker.rewind("p", 7)
    assert tracker.position("other") is None
    assert tracker.position("p") == 2
    assert tracker.commits() == {"p": 0}


def test_a_dropped_partition_is_forgotten_and_its_late_finishes_ignored() -> None:
    tracker = taken(0, 1)
    tracker.take("q", 9)
    tracker.drop(["p"])
    tracker.finish("p", 0)
    assert tracker.commits() == {"q": 9}
    assert tracker.position("p") is None
