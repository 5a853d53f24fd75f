"""The sync facade without a worker: what is sent when, and the errors that say what to call."""

from __future__ import annotations

import asyncio
import threading

import pytest

import asyncq
from asyncq import App, SyncResult, chain, chord, group
from asyncq.exceptions import BlockingCallError
from asyncq.sync import close_app, run_blocking_calls_on


@pytest.fixture
def app() -> App:
    app = App("unit-sync", broker="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_sync_names_are_exported() -> None:
    assert {"SyncResult", "SyncGroupResult"} <= set(asyncq.__all__)


@pytest.mark.parametrize("name", ["get", "ready", "state", "forget"])
def test_an_unsent_workflow_says_how_to_send_it(app: App, name: str) -> None:
    add = app.tasks["add"]
    with pytest.raises(AttributeError, match=rf"not sent yet.*chain\(\.\.\.\)\.delay\(\)\.{name}"):
        getattr(chain(add.s(1, 1), add.s(2)), name)
    with pytest.raises(AttributeError, match=r"group\(\.\.\.\)\.delay\(\)"):
        getattr(group(add.s(1, 1)), name)
    with pytest.raises(AttributeError, match=r"no attribute 'nonsense'$"):
        chain(add.s(1, 1)).nonsense  # noqa: B018


def test_calling_a_signature_runs_the_task_here(app: App) -> None:
    add = app.tasks["add"]
    assert add.s(2, 2)() == 4
    assert add.s(2)(5) == 7


def test_sending_from_a_thread_without_a_loop_sends_at_once(app: App) -> None:
    add = app.tasks["add"]
    result = add.delay(1, 2)
    assert isinstance(result, SyncResult)
    assert result.task_name == "add"
    assert "not sent" not in repr(result)
    assert group(add.s(1, 1), add.s(2, 2)).apply_async().results[1].task_name == "add"
    assert chord([add.s(1, 1)], add.s(1)).apply_async().parent is not None
    close_app(app)


async def test_in_a_running_loop_apply_async_sends_when_awaited(app: App) -> None:
    add = app.tasks["add"]
    pending = add.apply_async((1, 2))
    assert "not sent: await it" in repr(pending)
    sent = await pending
    assert sent.id == pending.id
    assert await app.purge() == 1
    with pytest.raises(BlockingCallError, match=r"await add.enqueue\(\.\.\.\)"):
        add.delay(1, 2)
    with pytest.raises(BlockingCallError, match=r"await group\(\.\.\.\)\.enqueue\(\)"):
        group(add.s(1, 1)).delay()
    with pytest.raises(BlockingCallError, match=r"await app.aclose\(\)"):
        close_app(app)
    await app.aclose()


def test_one_loop_thread_is_started_for_many_threads(app: App) -> None:
    add = app.tasks["add"]
    threads = [threading.Thread(target=add.delay, args=(i, i)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [t.name for t in threading.enumerate()].count("asyncq.sync") == 1
    close_app(app)
    assert asyncio.run(_count(app)) == 10  # memory:// keeps its queue across loops


async def _count(app: App) -> int:
    return await app.purge()


async def test_an_apply_async_never_awaited_in_async_code_is_reported(app: App) -> None:
    add = app.tasks["add"]
    holder = [add.apply_async((1, 2))]
    with pytest.warns(RuntimeWarning, match="coroutine 'apply_async' was never awaited"):
        holder.clear()  # the last reference: CPython finalizes the unsent send here
    assert await app.purge() == 0  # and nothing was sent
    await app.aclose()


async def test_sync_calls_reach_a_memory_app_whose_worker_runs_in_another_loop(app: App) -> None:
    add = app.tasks["add"]
    run_blocking_calls_on(app, asyncio.get_running_loop())
    try:
        async with app.worker(concurrency=2):
            values = await asyncio.to_thread(lambda: [add.delay(i, 1).get(timeout=10) for i in range(3)])
    finally:
        run_blocking_calls_on(app, None)
        await app.aclose()
    assert values == [1, 2, 3]
