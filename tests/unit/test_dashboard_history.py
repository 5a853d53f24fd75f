"""The dashboard's task history: folding events, order, the cap, the expiry, durability, memory."""

from __future__ import annotations

import gc
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

from asyncq.dashboard.history import TaskFilter, TaskHistory


def event(kind: str, task_id: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "uuid": task_id, "timestamp": at, "hostname": "w1", "name": "t.add", "queue": "q",
            "retries": 0, "root_id": task_id, "parent_id": None, **fields}  # fmt: skip


def life(task_id: str, at: float, outcome: str = "task-succeeded", **extra: Any) -> list[dict[str, Any]]:
    return [
        event("task-received", task_id, at, args=[1, 2], kwargs={}),
        event("task-started", task_id, at + 0.01),
        event(outcome, task_id, at + 0.02, **extra),
    ]


async def test_events_fold_into_one_row_per_task(tmp_path: Path) -> None:
    history = TaskHistory(tmp_path / "h.db")
    now = time.time()
    await history.add(life("a", now, runtime=0.5))
    await history.add(life("b", now, "task-failed", exception_type="ValueError", exception_message="bad"))
    a = await history.get("a")
    assert a is not None
    assert (a["state"], a["args"], a["worker"], a["runtime"]) == ("SUCCESS", [1, 2], "w1", 0.5)
    b = await history.get("b")
    assert b is not None
    assert (b["state"], b["exc_type"], b["exc_message"]) == ("FAILURE", "ValueError", "bad")
    assert await history.states() == {"SUCCESS": 1, "FAILURE": 1}
    assert [t["id"] for t in await history.tasks(TaskFilter(state="FAILURE"))] == ["b"]
    assert [t["id"] for t in await history.tasks(TaskFilter(search="a"))] == ["a"]
    assert await history.tasks(TaskFilter(search="%")) == []  # a LIKE wildcard is matched literally
    rates = await history.rates(60.0)
    assert (rates["finished"], rates["failed"]) == (2, 1)
    history.close()


async def test_an_older_or_repeated_event_never_moves_a_task_back(tmp_path: Path) -> None:
    history = TaskHistory(tmp_path / "h.db")
    now = time.time()
    events = life("a", now)
    await history.add([events[2], events[0]])  # out of order
    await history.add(events)  # replayed
    # The producer's task-sent arrives last, stamped after the worker had taken the task.
    await history.add([event("task-sent", "a", now + 1.0)])
    row = await history.get("a")
    assert row is not None and row["state"] == "SUCCESS"
    assert row["sent"] == now + 1.0
    history.close()


async def test_the_folded_state_does_not_depend_on_the_order_events_arrive_in() -> None:
    now = time.time()
    # task-sent stamped after the worker took the task (the producer stamps it once the publish
    # returned); task-started and a second event of the very same timestamp (a float timestamp
    # cannot tell apart events under a microsecond apart).
    running = [
        event("task-received", "a", now),
        event("task-started", "a", now + 0.01),
        event("task-sent", "a", now + 0.02),
    ]
    finished = [*running, event("task-succeeded", "a", now + 0.01, runtime=0.0)]
    for events, state, updated in ((running, "STARTED", now + 0.01), (finished, "SUCCESS", now + 0.01)):
        for order in itertools.permutations(events):
            for together in (False, True):  # one batch each, or all in one
                history = TaskHistory(":memory:")
                for batch in [list(order)] if together else [[e] for e in order]:
                    await history.add(batch)
                row = await history.get("a")
                assert row is not None
                arrived = [e["type"] for e in order]
                assert (row["state"], row["updated"], row["sent"]) == (state, updated, now + 0.02), arrived
                history.close()


async def test_history_survives_a_reopen(tmp_path: Path) -> None:
    history = TaskHistory(tmp_path / "h.db")
    await history.add(life("kept", time.time()))
    newest = await history.newest()
    history.close()
    again = TaskHistory(tmp_path / "h.db")
    row = await again.get("kept")
    assert row is not None and row["state"] == "SUCCESS"
    assert await again.newest() == newest
    again.close()


async def test_the_cap_and_the_expiry_drop_the_oldest_tasks(tmp_path: Path) -> None:
    history = TaskHistory(tmp_path / "h.db", limit=10, expires=3600)
    now = time.time()
    await history.add([event("task-succeeded", "ancient", now - 7200)])
    await history.add([event("task-succeeded", f"t{n:02}", now + n) for n in range(15)])
    await history.trim()
    assert await history.count() == 10
    assert await history.get("ancient") is None
    assert await history.get("t04") is None and await history.get("t05") is not None
    history.close()


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dashboard_history_limit"):
        TaskHistory(tmp_path / "h.db", limit=0)
    with pytest.raises(ValueError, match="dashboard_history_expires"):
        TaskHistory(tmp_path / "h.db", expires=0)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_memory_stays_flat_over_100000_events(tmp_path: Path) -> None:
    """100,000 task events (33,334 tasks) folded in: the process grows by the SQLite cache at most."""
    history = TaskHistory(tmp_path / "h.db", limit=20_000)
    now = time.time()

    def feed(count: int) -> None:
        batch: list[dict[str, Any]] = []
        for n in range(count):
            task_id = str(uuid.uuid4())
            batch += life(task_id, now + n * 1e-3, args=[n, "x" * 50])
            if len(batch) >= 498:
                history.add_sync(batch)
                batch = []
        history.add_sync(batch)

    feed(3_000)  # warm up: caches, interned strings
    gc.collect()
    before = _rss()
    feed(33_334)
    gc.collect()
    grown = _rss() - before
    assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 100,000 events"
    history.add_sync([])
    (count,) = history._conn.execute("SELECT count(*) FROM tasks").fetchone()
    assert count <= 20_000 + 2_000  # the cap, give or take one trim interval
    history.close()


async def test_the_timeline_counts_each_minute_of_the_last_hour(tmp_path: Path) -> None:
    history = TaskHistory(tmp_path / "h.db")
    now = time.time()
    events: list[dict[str, Any]] = []
    for n, outcome in enumerate(["task-succeeded", "task-failed", "task-succeeded"]):
        events += [event("task-sent", f"t{n}", now - 3.0), event("task-started", f"t{n}", now - 2.0)]
        events.append(event(outcome, f"t{n}", now - 1.0))
    events.append(event("task-succeeded", "old", now - 7200))
    await history.add(events)
    timeline = await history.timeline(3600.0, 60.0)
    assert len(timeline) == 60
    assert sum(slot["finished"] for slot in timeline) == 3
    assert sum(slot["failed"] for slot in timeline) == 1
    busy = [slot for slot in timeline if slot["finished"]]
    assert all(slot["queue_wait"] == pytest.approx(1.0) for slot in busy)
    history.close()
