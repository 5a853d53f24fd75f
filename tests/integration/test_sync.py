"""The sync API against a real worker on Redis: Celery's calls, from threads with no event loop.

The worker runs on the test's loop; the sync calls run in other threads (``asyncio.to_thread``),
as a Django view or a script would, and go through the process's one ``asyncq.sync`` loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import asyncq.sync
from asyncq import App, State, chain, chord, group
from asyncq.exceptions import BlockingCallError
from asyncq.exceptions import TimeoutError as ResultTimeout
from asyncq.sync import SyncGroupResult, SyncResult
from tests.apps.sync_app import Boom, build

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


def with_prefix(redis_url: str, prefix: str) -> str:
    return f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix={prefix}"


@pytest.fixture
async def sync_app(redis_url: str, prefix: str, admin: Redis) -> AsyncIterator[App]:
    app = build(with_prefix(redis_url, prefix))
    async with app.worker(concurrency=64, thread_pool_size=16):
        yield app
    await asyncio.to_thread(asyncq.sync.close_app, app)
    await app.aclose()


def task(app: App, name: str) -> Any:
    return app.tasks[f"sync_app.{name}"]


async def test_celery_first_example_runs_verbatim_in_a_script(sync_app: App) -> None:
    script = "from tests.apps.sync_app import add\nresult = add.delay(4, 4)\nprint(result.get())\n"
    env = {**os.environ, "ASYNCQ_TEST_SYNC_BROKER": sync_app.broker_url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT * 2)
    # A clean exit: the loop thread's connections were closed at exit without complaint.
    assert (proc.returncode, out, err) == (0, b"8\n", b"")


async def test_blocking_handle_reads_state_and_outcome(sync_app: App) -> None:
    add, boom = task(sync_app, "add"), task(sync_app, "boom")

    def calls() -> None:
        ok = add.delay(2, 3)
        assert isinstance(ok, SyncResult)
        assert ok.get(timeout=TIMEOUT) == 5
        assert (ok.state, ok.status, ok.ready(), ok.successful(), ok.failed()) == (
            State.SUCCESS,
            State.SUCCESS,
            True,
            True,
            False,
        )
        assert ok.info == 5
        bad = boom.delay("no")
        with pytest.raises(Boom, match="no"):
            bad.get(timeout=TIMEOUT)
        assert isinstance(bad.get(timeout=TIMEOUT, propagate=False), Boom)
        assert (bad.state, bad.ready(), bad.successful(), bad.failed()) == (State.FAILURE, True, False, True)
        ok.forget()
        assert ok.state == State.PENDING

    await asyncio.to_thread(calls)


async def test_get_times_out(sync_app: App) -> None:
    slow = task(sync_app, "slow")

    def calls() -> None:
        result = slow.delay(3.0)
        with pytest.raises(ResultTimeout, match=rf"task {result.id} did not finish within 0.2s"):
            result.get(timeout=0.2)
        assert result.get(timeout=TIMEOUT) == 3.0

    await asyncio.to_thread(calls)


async def test_blocking_apply_async_takes_every_option(sync_app: App) -> None:
    add, boom = task(sync_app, "add"), task(sync_app, "boom")
    app = sync_app

    def calls() -> None:
        later = add.apply_async((1, 2), countdown=0.3, priority=5, headers={"h": "v"}, task_id="sync-fixed")
        assert later.id == "sync-fixed"
        assert later.get(timeout=TIMEOUT) == 3
        linked = add.apply_async((2, 2), link=add.s(10).set(task_id="sync-linked"), serializer="json")
        assert linked.get(timeout=TIMEOUT) == 4
        assert SyncResult(app.AsyncResult("sync-linked")).get(timeout=TIMEOUT) == 14
        failed = boom.apply_async(("x",), link_error=add.si(0, 0).set(task_id="sync-errback"))
        assert isinstance(failed.get(timeout=TIMEOUT, propagate=False), Boom)
        assert SyncResult(app.AsyncResult("sync-errback")).get(timeout=TIMEOUT) == 0
        expired = add.apply_async((1, 1), countdown=0.5, expires=0.1)
        assert expired.get(timeout=TIMEOUT, propagate=False).__class__.__name__ == "TaskRevokedError"
        by_name = app.send_task("sync_app.add", (20, 1), countdown=0.1)
        assert isinstance(by_name, SyncResult) and by_name.get(timeout=TIMEOUT) == 21
        other_queue = add.apply_async((1, 1), queue="nobody-listens", ignore_result=True)
        assert other_queue.state == State.PENDING

    await asyncio.to_thread(calls)


async def test_canvases_send_and_block(sync_app: App) -> None:
    add, tsum = task(sync_app, "add"), task(sync_app, "tsum")

    def calls() -> None:
        assert chain(add.s(1, 1), add.s(10)).delay().get(timeout=TIMEOUT) == 12
        assert chain(add.s(1, 1), add.s(10))().get(timeout=TIMEOUT) == 12
        assert (add.s(1) | add.s(2)).delay(1).get(timeout=TIMEOUT) == 4
        assert chain(add.s(1, 1), add.s(10)).delay().parent is not None
        # Celery's `job = group(...); result = job.apply_async()` in a script sends it.
        job = group(add.s(i, i) for i in range(10))
        result = job.apply_async()
        assert isinstance(result, SyncGroupResult)
        assert result.get(timeout=TIMEOUT) == [i * 2 for i in range(10)]
        assert (len(result), result.completed_count(), result.ready()) == (10, 10, True)
        assert [member.get(timeout=TIMEOUT) for member in result.results] == [i * 2 for i in range(10)]
        assert group(add.s(i, 1) for i in range(3)).delay().get(timeout=TIMEOUT) == [1, 2, 3]
        assert group(add.s(i, 1) for i in range(3))().get(timeout=TIMEOUT) == [1, 2, 3]
        assert chord((add.s(i, i) for i in range(10)), tsum.s()).delay().get(timeout=TIMEOUT) == 90
        assert chord([add.s(1, 1)], tsum.s())().get(timeout=TIMEOUT) == 2
        assert add.s(2, 2).delay().get(timeout=TIMEOUT) == 4
        assert add.s(2).apply_async((3,)).get(timeout=TIMEOUT) == 5

    await asyncio.to_thread(calls)


async def test_fifty_threads_delay_and_get_at_once(sync_app: App) -> None:
    add = task(sync_app, "add")
    n = 50
    results: dict[int, Any] = {}
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait(TIMEOUT)
        try:
            results[i] = add.delay(i, 1000).get(timeout=TIMEOUT * 2)
        except BaseException as exc:  # reported below, per thread
            results[i] = exc

    def run_all() -> None:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)

    await asyncio.to_thread(run_all)
    assert results == {i: i + 1000 for i in range(n)}
    # One loop thread served them all.
    assert [t.name for t in threading.enumerate()].count("asyncq.sync") == 1


async def test_calls_reuse_one_loop_and_one_set_of_connections(sync_app: App) -> None:
    add = task(sync_app, "add")

    async def broker_identity() -> int:
        return id(sync_app.broker)

    def calls() -> tuple[int, int]:
        add.delay(1, 1).get(timeout=TIMEOUT)
        first = asyncq.sync.blocking(sync_app, broker_identity())
        add.delay(2, 2).get(timeout=TIMEOUT)
        return first, asyncq.sync.blocking(sync_app, broker_identity())

    first, second = await asyncio.to_thread(calls)
    assert first == second


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
async def test_a_forked_child_gets_its_own_loop_and_connections(sync_app: App) -> None:
    add = task(sync_app, "add")

    def parent_and_child() -> tuple[int, bytes]:
        assert add.delay(1, 2).get(timeout=TIMEOUT) == 3  # the parent's loop thread exists
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: as a pre-fork server's worker process would
            code = 1
            try:
                os.close(read_end)
                value = add.delay(20, 3).get(timeout=TIMEOUT)
                os.write(write_end, str(value).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            output = pipe.read()
        _, status = os.waitpid(pid, 0)
        # The parent's connections still work after the child used (and left) its own.
        assert add.delay(2, 2).get(timeout=TIMEOUT) == 4
        return os.waitstatus_to_exitcode(status), output

    code, output = await asyncio.to_thread(parent_and_child)
    assert (code, output) == (0, b"23")


async def test_a_blocking_call_in_a_running_loop_raises_at_once(sync_app: App) -> None:
    add = task(sync_app, "add")
    with pytest.raises(BlockingCallError, match=r"await add.enqueue\(\.\.\.\)"):
        add.delay(1, 1)
    with pytest.raises(BlockingCallError, match=r"await chain.enqueue"):
        chain(add.s(1, 1), add.s(1)).delay()
    sent = await asyncio.to_thread(add.delay, 1, 1)
    with pytest.raises(BlockingCallError, match=r"await result.async_result.get\(\)"):
        sent.get(timeout=1)
    assert await sent.async_result.get(timeout=TIMEOUT) == 2
    # In a running loop apply_async sends when awaited, as it always did.
    pending = add.apply_async((5, 5))
    with pytest.raises(BlockingCallError, match=r"await task.apply_async"):
        pending.get(timeout=1)
    assert await (await pending).get(timeout=TIMEOUT) == 10
    assert await (await asyncio.create_task(add.apply_async((1, 2)))).get(timeout=TIMEOUT) == 3


async def test_a_blocking_call_on_the_sync_loop_itself_raises_instead_of_deadlocking(sync_app: App) -> None:
    add = task(sync_app, "add")

    async def inside() -> str:
        try:
            add.delay(1, 1)
        except BlockingCallError as exc:
            return str(exc)
        return "no error"

    message = await asyncio.wait_for(asyncio.to_thread(asyncq.sync.blocking, sync_app, inside()), TIMEOUT)
    assert "await add.enqueue(...)" in message
