"""GroupCommit: concurrent submits share flushes, one flush at a time, in order."""

from __future__ import annotations

import asyncio

from asyncq._redis.group import GroupCommit


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
