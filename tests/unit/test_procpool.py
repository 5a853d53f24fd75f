"""Tests for asyncq.worker.procpool: results, errors, concurrency, time limits, recovery."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from asyncq.exceptions import SerializationError, SoftTimeLimitExceeded, TaskError, TimeLimitExceeded
from asyncq.worker.procpool import ProcessPool
from tests.unit import procpool_helpers as helpers

# Every await on the pool is bounded so that a bug fails the test instead of hanging the suite.
TIMEOUT = 30.0


async def call(pool: ProcessPool, fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    return await asyncio.wait_for(pool.run(fn, args, **options), TIMEOUT)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.asyncio
async def test_result_round_trip() -> None:
    async with ProcessPool(size=1) as pool:
        assert await asyncio.wait_for(pool.run(helpers.add, (2, 3), {"scale": 10}), TIMEOUT) == 50
        assert await call(pool, helpers.getpid) != os.getpid()
        assert pool.size == 1
        assert pool.alive_count == 1


@pytest.mark.asyncio
async def test_exception_propagates_with_type_and_remote_traceback() -> None:
    async with ProcessPool(size=1) as pool:
        with pytest.raises(helpers.Boom, match="kaboom") as info:
            await call(pool, helpers.raise_boom, "kaboom")
        assert "raise_boom" in info.value.remote_traceback  # type: ignore[attr-defined]
        assert "procpool_helpers.py" in info.value.remote_traceback  # type: ignore[attr-defined]
        # A failing call does not cost the child.
        assert pool.alive_count == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        (helpers.raise_unpicklable, "tests.unit.procpool_helpers.UnpicklableError"),
        (helpers.raise_needs_two_args, "tests.unit.procpool_helpers.NeedsTwoArgsError"),
        (helpers.call_sys_exit, "builtins.SystemExit"),  # must not exit the parent
    ],
)
async def test_exception_that_cannot_cross_becomes_task_error(fn: Callable[[], None], type_name: str) -> None:
    async with ProcessPool(size=1) as pool:
        with pytest.raises(TaskError) as info:
            await call(pool, fn)
        assert info.value.exc_type == type_name
        assert fn.__name__ in info.value.remote_traceback


@pytest.mark.asyncio
async def test_unpicklable_result_raises_serialization_error() -> None:
    async with ProcessPool(size=1) as pool:
        with pytest.raises(SerializationError, match="lock"):
            await call(pool, helpers.return_unpicklable)
        assert await call(pool, helpers.add, 1, 1) == 2


@pytest.mark.asyncio
async def test_unpicklable_call_raises_serialization_error_in_the_parent() -> None:
    async with ProcessPool(size=1) as pool:
        with pytest.raises(SerializationError):
            await call(pool, lambda: None)
        assert pool.alive_count == 0  # refused before any child was started


@pytest.mark.asyncio
async def test_children_ignore_sigint() -> None:
    async with ProcessPool(size=1) as pool:
        assert await call(pool, helpers.sigint_is_ignored) is True


@pytest.mark.asyncio
async def test_size_two_runs_two_calls_concurrently() -> None:
    async with ProcessPool(size=2) as pool:
        # Start both children first, so that child start-up does not skew the overlap below.
        await asyncio.wait_for(asyncio.gather(pool.run(helpers.getpid), pool.run(helpers.getpid)), TIMEOUT)
        assert pool.alive_count == 2
        calls = (pool.run(helpers.sleep_and_report, (0.5,)) for _ in range(2))
        first, second = await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)
        (pid1, start1, end1), (pid2, start2, end2) = first, second
        assert pid1 != pid2
        assert max(start1, start2) < min(end1, end2), "the two calls did not overlap"
        assert pool.alive_count == 2  # never more than size


@pytest.mark.asyncio
async def test_calls_beyond_size_wait_for_an_idle_child() -> None:
    async with ProcessPool(size=1) as pool:
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.run(helpers.sleep_and_report, (0.1,)) for _ in range(3))), TIMEOUT
        )
        assert len({pid for pid, _, _ in results}) == 1
        spans = sorted((start, end) for _, start, end in results)
        assert all(prev_end <= next_start for (_, prev_end), (next_start, _) in itertools.pairwise(spans))


@pytest.mark.asyncio
async def test_soft_limit_is_raised_inside_the_function() -> None:
    async with ProcessPool(size=1) as pool:
        result = await call(pool, helpers.sleep_catching_soft_limit, 60, soft_time_limit=0.3, time_limit=20)
        assert result == "cleaned up"


@pytest.mark.asyncio
async def test_uncaught_soft_limit_propagates_and_keeps_the_child() -> None:
    async with ProcessPool(size=1) as pool:
        pid = await call(pool, helpers.getpid)
        with pytest.raises(SoftTimeLimitExceeded) as info:
            await call(pool, helpers.sleep, 60, soft_time_limit=0.3)
        assert "time.sleep" in info.value.remote_traceback  # type: ignore[attr-defined]
        assert await call(pool, helpers.getpid) == pid


@pytest.mark.asyncio
async def test_hard_limit_kills_the_child_and_the_next_call_gets_a_new_one() -> None:
    async with ProcessPool(size=1) as pool:
        pid = await call(pool, helpers.getpid)
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded, match=r"sleep exceeded its time limit of 0\.5s"):
            await call(pool, helpers.sleep, 60, time_limit=0.5)
        assert time.monotonic() - started < 15  # generous: the limit is 0.5 s, the sleep 60 s
        assert not process_exists(pid)
        assert pool.alive_count == 0
        new_pid = await call(pool, helpers.getpid)
        assert new_pid != pid
        assert await call(pool, helpers.add, 2, 2) == 4


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fn", "arg", "reason"),
    [
        (helpers.exit_abruptly, 7, "exit code 7"),
        (helpers.kill_self, signal.SIGKILL, "SIGKILL"),
        (helpers.kill_self, signal.SIGSEGV, "SIGSEGV"),
    ],
)
async def test_unexpected_child_death_is_worker_lost_and_the_pool_recovers(
    fn: Callable[[int], None], arg: int, reason: str
) -> None:
    async with ProcessPool(size=1) as pool:
        pid = await call(pool, helpers.getpid)
        with pytest.raises(TaskError) as info:
            await call(pool, fn, arg)
        assert info.value.exc_type == "WorkerLostError"
        assert reason in str(info.value)
        assert str(pid) in str(info.value)
        assert not process_exists(pid)
        assert await call(pool, helpers.getpid) != pid


@pytest.mark.asyncio
async def test_cancellation_kills_the_child() -> None:
    async with ProcessPool(size=1) as pool:
        pid = await call(pool, helpers.getpid)
        task = asyncio.create_task(pool.run(helpers.sleep, (60,)), name="test-procpool-cancel")
        await asyncio.sleep(0.2)  # let the call reach the child; either way the child must die
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
        assert not process_exists(pid)
        assert pool.alive_count == 0
        assert await call(pool, helpers.getpid) != pid


@pytest.mark.asyncio
async def test_aclose_leaves_no_live_children_and_is_idempotent() -> None:
    pool = ProcessPool(size=2)
    pids = await asyncio.wait_for(asyncio.gather(pool.run(helpers.getpid), pool.run(helpers.getpid)), TIMEOUT)
    assert pool.alive_count == 2
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    assert pool.alive_count == 0
    assert not any(process_exists(pid) for pid in pids)
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    with pytest.raises(RuntimeError, match="closed"):
        await call(pool, helpers.getpid)


@pytest.mark.asyncio
async def test_aclose_kills_a_child_in_the_middle_of_a_call() -> None:
    pool = ProcessPool(size=1)
    pid = await call(pool, helpers.getpid)
    task = asyncio.create_task(pool.run(helpers.sleep, (60,)), name="test-procpool-aclose-busy")
    await asyncio.sleep(0.2)
    await asyncio.wait_for(pool.aclose(), TIMEOUT)
    with pytest.raises(TaskError):
        await asyncio.wait_for(task, TIMEOUT)
    assert not process_exists(pid)
    assert pool.alive_count == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size"):
        ProcessPool(size=0)


@pytest.mark.asyncio
async def test_notes_reach_on_notify_in_order_before_the_result() -> None:
    notes: list[Any] = []
    async with ProcessPool(size=1) as pool:
        result = await call(pool, helpers.send_notes, 5, on_notify=notes.append)
        assert result == "refused an unpicklable note"
        assert notes == [{"note": i} for i in range(5)]  # all handled before run() returned
        assert await call(pool, helpers.add, 1, 2) == 3  # the pipe is still in step
    with pytest.raises(RuntimeError, match="only inside a call"):
        helpers.notify_parent("outside any pool")
