"""GroupCommit: concurrent submits share flushes, one flush at a time, in order."""

from __future__ import annotations

import asyncio

from asyncq._redis.group import GroupCommit
from tests.helpers import until


def _closed() -> Exception:
    return RuntimeError("closed")


async def test_submits_awaited_after_another_flush_started_queue_behind_it() -> None:
    flushes: list[list[int]] = []
    running = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal running
        running += 1
        assert running == 1, "two flushes at once"
        flushes.append(items)
        await asyncio.sleep(0)
        running -= 1
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(flush, "test", _closed)
    # Submitted while nothing is in flight, all of them, before any is awaited.
    calls = [group.submit(i) for i in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert results == [0, 10, 20, 30, 40]
    assert sorted(item for batch in flushes for item in batch) == [0, 1, 2, 3, 4]
    assert flushes[0] == [0] and len(flushes) == 2  # the first flushed alone, the rest together
    await group.close()


async def test_items_queued_without_a_future_are_flushed_or_reported_dropped() -> None:
    release = asyncio.Event()
    hold = asyncio.Event()  # set: the flush of "e" never ends
    flushed: list[list[str]] = []
    dropped: list[tuple[list[str], str]] = []

    async def flush(items: list[str]) -> list[None]:
        flushed.append(items)
        await release.wait()
        if "e" in items and hold.is_set():
            await asyncio.Event().wait()
        return [None] * len(items)

    group: GroupCommit[str, None] = GroupCommit(
        flush, "test", _closed, lambda items, exc: dropped.append((items, str(exc)))
    )
    assert not group.busy
    first = asyncio.ensure_future(group.submit("a"))  # flushes by itself: the group is busy
    await asyncio.sleep(0)
    assert group.busy
    group.queue("b")
    group.queue("c")
    release.set()
    await asyncio.wait_for(first, 5)
    await asyncio.wait_for(group.close(), 5)
    assert flushed == [["a"], ["b", "c"]] and not dropped

    # The draining task cancelled (the backend closing) before their turn: reported, not lost.
    hold.set()
    release.clear()
    first = asyncio.ensure_future(group.submit("d"))
    await asyncio.sleep(0)
    group.queue("e")
    release.set()
    await asyncio.wait_for(first, 5)
    await until(lambda: flushed[-1] == ["e"])  # "e" is being flushed, by the draining task
    group.queue("f")
    assert group._task is not None
    group._task.cancel()
    await asyncio.gather(group._task, return_exceptions=True)
    assert dropped == [(["f"], "closed")]
