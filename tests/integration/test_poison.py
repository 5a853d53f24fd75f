"""Poison messages: redelivered messages run isolated; only isolated crashes dead-letter.

A worker that died of a poison message lost every message it held; those come back with
``delivery_count > 1``. Here a "worker death" is simulated by taking a message and handing
it back unfinished; the poison itself only ever runs (and kills) a sandbox child.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import aclosing
from typing import Any

import pytest

from asyncq import App, State
from asyncq.exceptions import WorkerLostError
from asyncq.result import encode_record
from asyncq.task import Task
from tests.apps import poison_tasks
from tests.helpers import until

TIMEOUT = 30.0


def adopt(app: App, *tasks: Task[Any, Any]) -> None:
    """Let ``app``'s worker run module-level tasks of tests.apps.poison_tasks (importable by reference)."""
    for task in tasks:
        app.tasks[task.name] = task


async def lose(app: App, messages: int = 1, *, times: int = 1) -> None:
    """Take ``messages`` messages and give them back unfinished, as a dying worker would; repeat."""
    for _ in range(times):
        async with aclosing(app.broker.consume(["default"], prefetch=messages)) as deliveries:
            held = [await asyncio.wait_for(anext(deliveries), TIMEOUT) for _ in range(messages)]
            for delivery in held:
                await delivery.nack()


async def test_redelivered_message_that_finishes_is_not_dead_lettered(app: App) -> None:
    @app.task
    async def innocent() -> str:
        return "ok"

    r = await innocent.enqueue()
    await lose(app)  # delivered once already: with max_deliveries=1 the old rule dead-lettered it
    async with app.worker(max_deliveries=1):
        assert await r.get(timeout=TIMEOUT) == "ok"
    assert await app.broker.dead_letters("default") == []


async def test_suspect_runs_in_a_sandbox_process(app: App) -> None:
    adopt(app, poison_tasks.work, poison_tasks.sync_work)
    await app.connect()
    results = await app.send_many(
        [poison_tasks.work.build_message((1,)), poison_tasks.sync_work.build_message((2,))]
    )
    await lose(app, 2)
    async with app.worker(max_deliveries=1):
        for r, index in zip(results, (1, 2), strict=True):
            value = await r.get(timeout=TIMEOUT)
            assert value["index"] == index
            assert value["pid"] != os.getpid()  # ran in a child: a crash there spares the worker
            assert await r.state() == State.SUCCESS


@pytest.mark.parametrize("task", [poison_tasks.work, poison_tasks.sync_work], ids=["async", "thread"])
async def test_poison_suspect_is_dead_lettered_once_after_isolated_crashes(
    app: App, task: Task[Any, Any]
) -> None:
    adopt(app, task)
    await app.connect()
    poison, healthy = await app.send_many(
        [task.build_message((0,), {"poison": True}), task.build_message((1,))]
    )
    await lose(app, 2)  # both were held by a worker that died: both are suspects now
    async with app.worker(max_deliveries=2) as worker:
        assert (await healthy.get(timeout=TIMEOUT))["index"] == 1
        with pytest.raises(WorkerLostError, match=r"crashed 2 times while running isolated"):
            await poison.get(timeout=TIMEOUT)
        await until(lambda: worker.in_flight == 0, timeout=TIMEOUT)
    dead = await app.broker.dead_letters("default")
    assert [d.id for d in dead] == [poison.id]
    assert "exit code 1" in dead[0].reason
    assert await app.broker.queue_length("default") == 0


async def test_suspect_that_already_succeeded_is_acked_without_running(app: App) -> None:
    runs = 0

    @app.task
    async def once() -> str:
        nonlocal runs
        runs += 1
        return "second"

    r = await once.enqueue()
    # Its worker stored SUCCESS, then died before acknowledging.
    record = encode_record(
        app.serializers, task_id=r.id, status=State.SUCCESS, result="first", task=once.name
    )
    await app.backend.set(r.id, record, final=True, ttl=None)
    await lose(app)
    async with app.worker() as worker:
        await until(_empty(app), timeout=TIMEOUT)
        await until(lambda: worker.in_flight == 0, timeout=TIMEOUT)
    assert runs == 0
    assert await r.get(timeout=1) == "first"
    assert await app.broker.dead_letters("default") == []


def _empty(app: App) -> Any:
    async def check() -> bool:
        return await app.broker.queue_length("default") == 0

    return check


async def test_a_failing_duplicate_does_not_overwrite_success(app: App) -> None:
    calls = 0

    @app.task
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("the duplicate failed")
        return "done"

    message = flaky.build_message()
    r, _ = await app.send_many([message, message])  # the same task id twice (a duplicate publish)
    async with app.worker(concurrency=1) as worker:
        await until(lambda: calls == 2, timeout=TIMEOUT)
        await until(lambda: worker.in_flight == 0, timeout=TIMEOUT)
    assert await r.state() == State.SUCCESS
    assert await r.get(timeout=1) == "done"


async def test_unimportable_suspect_runs_alone_and_its_crashes_survive_the_worker(app: App) -> None:
    @app.task
    async def local() -> None:  # a closure: the sandbox cannot import it
        pass

    r = await local.enqueue()
    await lose(app)
    # Two earlier workers died while running it alone: each counted its run before starting it.
    key = f"asyncq.isolated-crashes.{r.id}.0"
    await app.backend.incr(key, 2, ttl=60)
    async with app.worker(max_deliveries=2):
        with pytest.raises(WorkerLostError, match=r"crashed 2 times while running isolated"):
            await r.get(timeout=TIMEOUT)
    assert [d.id for d in await app.broker.dead_letters("default")] == [r.id]


async def test_unimportable_suspect_runs_alone(app: App) -> None:
    order: list[str] = []
    release = asyncio.Event()

    @app.task
    async def suspect() -> None:  # a closure: it runs in the worker, with nothing beside it
        order.append("suspect start")
        await release.wait()
        order.append("suspect end")

    @app.task
    async def ordinary() -> None:
        order.append("ordinary")

    s = await suspect.enqueue()
    await lose(app)
    async with app.worker(concurrency=4) as worker:
        await until(lambda: order == ["suspect start"], timeout=TIMEOUT)
        o = await ordinary.enqueue()
        await until(lambda: worker.in_flight == 2, timeout=TIMEOUT)  # taken, held at the gate
        await asyncio.sleep(0.2)  # give an unheld task every chance to start (no timing asserted)
        release.set()
        await s.get(timeout=TIMEOUT)
        await o.get(timeout=TIMEOUT)
    assert order == ["suspect start", "suspect end", "ordinary"]


async def test_backstop_dead_letters_a_message_delivered_far_too_often(app: App) -> None:
    @app.task
    async def looping() -> None:
        pass

    r = await looping.enqueue()
    await lose(app, times=20)  # max_deliveries=1: the backstop is 20 deliveries
    async with app.worker(max_deliveries=1):
        with pytest.raises(WorkerLostError, match=r"delivered 21 times without finishing"):
            await r.get(timeout=TIMEOUT)
    assert [d.id for d in await app.broker.dead_letters("default")] == [r.id]


async def test_a_message_given_back_at_shutdown_is_not_a_suspect(app: App) -> None:
    adopt(app, poison_tasks.hold)
    await app.connect()
    (r,) = await app.send_many([poison_tasks.hold.build_message()])
    async with app.worker(shutdown_timeout=0.05) as worker:
        await until(lambda: worker.in_flight == 1, timeout=TIMEOUT)
    # The worker cut it short and gave it back on purpose: it runs normally, in the worker.
    async with app.worker():
        assert await r.get(timeout=TIMEOUT) == os.getpid()


async def test_a_copy_of_a_dead_lettered_poison_message_is_acked_not_dead_lettered_again(app: App) -> None:
    @app.task
    async def poison() -> None:
        pass

    r = await poison.enqueue()
    # A copy of a message already judged poison: its crashes are counted, its record is FAILURE.
    await app.backend.incr(f"asyncq.isolated-crashes.{r.id}.0", 2, ttl=60)
    record = encode_record(
        app.serializers, task_id=r.id, status=State.FAILURE, exc=WorkerLostError("crashed"), task=poison.name
    )
    await app.backend.set(r.id, record, final=True, ttl=None)
    await lose(app)
    async with app.worker(max_deliveries=2) as worker:
        await until(_empty(app), timeout=TIMEOUT)
        await until(lambda: worker.in_flight == 0, timeout=TIMEOUT)
    assert await app.broker.dead_letters("default") == []
    assert await r.state() == State.FAILURE


async def test_two_copies_of_a_poison_message_are_dead_lettered_once(app: App) -> None:
    adopt(app, poison_tasks.work)
    await app.connect()
    message = poison_tasks.work.build_message((0,), {"poison": True})
    r, _ = await app.send_many([message, message])  # two copies with one id, as a re-publish leaves
    await lose(app, 2)
    async with app.worker(max_deliveries=1) as worker:
        with pytest.raises(WorkerLostError):
            await r.get(timeout=TIMEOUT)
        await until(_empty(app), timeout=TIMEOUT)
        await until(lambda: worker.in_flight == 0, timeout=TIMEOUT)
    assert [d.id for d in await app.broker.dead_letters("default")] == [r.id]
