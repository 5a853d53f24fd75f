"""Sync tasks past their hard time limit: the thread pool replaces them and stays full size."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from asyncq import App
from asyncq.exceptions import TimeLimitExceeded
from asyncq.worker.threads import ThreadPool
from tests.helpers import until

TIMEOUT = 15.0


async def test_stuck_threads_past_their_hard_limit_do_not_starve_a_quick_task(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    unblock = threading.Event()
    finished = 0
    lock = threading.Lock()

    @app.task(time_limit=0.2)
    def stuck() -> None:
        nonlocal finished
        try:
            unblock.wait()  # blocked in C: the exception raised into the thread cannot land
        finally:
            with lock:
                finished += 1

    @app.task
    def quick() -> str:
        return "quick"

    caplog.set_level(logging.DEBUG)
    try:
        async with app.worker(concurrency=10, thread_pool_size=2):
            stuck_results = [await stuck.enqueue() for _ in range(2)]
            for r in stuck_results:
                with pytest.raises(TimeLimitExceeded):
                    await r.get(timeout=TIMEOUT)
            # Both pool threads are still stuck; without replacements this would never run.
            assert await (await quick.enqueue()).get(timeout=TIMEOUT) == "quick"
            unblock.set()
            await until(lambda: finished == 2, timeout=TIMEOUT)
            await asyncio.sleep(0.05)  # let the late outcomes reach the loop
    finally:
        unblock.set()  # never leave a thread blocked behind a failed test
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_abandoned_thread_is_replaced_and_exits_when_its_call_returns() -> None:
    pool = ThreadPool(1)
    release = threading.Event()
    started = threading.Event()
    idents: list[int] = []

    def block() -> str:
        idents.append(threading.get_ident())
        started.set()
        release.wait()
        return "late"

    late = pool.submit(block)
    assert started.wait(TIMEOUT)
    pool.abandon(idents[0])
    assert pool.thread_count == 1  # the replacement; the stuck one no longer counts
    assert pool.submit(lambda: "next").result(timeout=TIMEOUT) == "next"
    release.set()
    assert late.result(timeout=TIMEOUT) == "late"
    assert pool.thread_count == 1
    pool.shutdown(cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)
