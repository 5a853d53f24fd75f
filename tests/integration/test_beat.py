"""The scheduler embedded in one event loop, over the embedded stores (memory:// and sqlite://).

On sqlite:// each scheduler gets its own App, and so its own connections to the shared file,
as separate processes would; on memory:// they share one App (its store is the process).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from asyncq import App
from asyncq.message import Message, decode_message
from asyncq.scheduler import HEADER_TICK, Scheduler, tick_task_id

PERIOD = 0.2


@pytest.fixture
async def apps(store_url: str) -> AsyncIterator[Callable[[], App]]:
    """Make Apps over the test's store: one per call on sqlite://, the same one on memory://."""
    made: list[App] = []

    def make() -> App:
        if store_url.startswith("memory:") and made:
            return made[0]
        app = App("beat-it", broker=store_url)
        made.append(app)
        return app

    yield make
    for app in made:
        await app.aclose()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Scheduler], asyncio.Task[None]]]:
    running: list[tuple[Scheduler, asyncio.Task[None]]] = []

    def start(scheduler: Scheduler) -> asyncio.Task[None]:
        task = asyncio.create_task(scheduler.serve(), name=f"test.beat.{len(running)}")
        running.append((scheduler, task))
        return task

    yield start
    for scheduler, _ in running:
        scheduler.stop()
    async with asyncio.timeout(10):
        await asyncio.gather(*(task for _, task in running))


async def take_all(app: App) -> list[Message]:
    count = await app.broker.queue_length("default")
    messages: list[Message] = []
    if count == 0:
        return messages
    deliveries = app.broker.consume(["default"], prefetch=count)
    try:
        async with asyncio.timeout(10):
            async for delivery in deliveries:
                messages.append(decode_message(delivery.body, app.serializers))
                await delivery.ack()
                if len(messages) == count:
                    break
    finally:
        await deliveries.aclose()
    return messages


async def wait_for_queue(app: App, count: int, timeout: float = 20) -> None:
    await app.connect()
    async with asyncio.timeout(timeout):
        while await app.broker.queue_length("default") < count:
            await asyncio.sleep(0.02)


def configure(app: App) -> None:
    app.conf.beat_schedule = {"fast": {"task": "tasks.fast", "schedule": PERIOD, "options": {"expires": 60}}}
    app.conf.beat_refresh_interval = PERIOD


async def test_three_schedulers_send_each_tick_once(
    apps: Callable[[], App], serve: Callable[[Scheduler], asyncio.Task[None]]
) -> None:
    schedulers = []
    for _ in range(3):
        app = apps()
        configure(app)
        schedulers.append(Scheduler(app))
    for scheduler in schedulers:
        serve(scheduler)
    observer = schedulers[0].app
    await wait_for_queue(observer, 8)
    for scheduler in schedulers:
        scheduler.stop()
    async with asyncio.timeout(10):
        while any(s.ready.is_set() for s in schedulers):
            await asyncio.sleep(0.01)

    messages = await take_all(observer)
    ticks = [datetime.fromisoformat(m.headers[HEADER_TICK]) for m in messages]
    assert len(set(ticks)) == len(ticks), "a tick was sent twice"
    assert [m.id for m in messages] == [tick_task_id("fast", t) for t in ticks]
    ticks.sort()
    gaps = {round((b - a) / timedelta(seconds=PERIOD)) for a, b in itertools.pairwise(ticks)}
    assert gaps == {1}, "a tick was skipped"
    assert sum(s.stats["sent"] for s in schedulers) == len(messages)


async def test_an_entry_added_through_one_app_is_sent_by_another(
    apps: Callable[[], App], serve: Callable[[Scheduler], asyncio.Task[None]]
) -> None:
    sender, editor = apps(), apps()
    sender.conf.beat_refresh_interval = 0.1
    scheduler = Scheduler(sender)
    serve(scheduler)
    async with asyncio.timeout(10):
        await scheduler.ready.wait()
    await editor.schedule.add("added", "tasks.added", PERIOD, args=[1, 2], options={"expires": 60})
    await wait_for_queue(sender, 1)
    await editor.schedule.remove("added")
    async with asyncio.timeout(10):
        while "added" in scheduler._states:
            await asyncio.sleep(0.02)
    [first, *_] = await take_all(sender)
    assert (first.task, first.args) == ("tasks.added", [1, 2])


async def test_worker_with_beat_runs_each_tick_and_stores_its_result(
    apps: Callable[[], App],
) -> None:
    app = apps()
    seen: list[str] = []
    enough = asyncio.Event()

    @app.periodic(PERIOD, bind=True, expires=60)
    async def tick(self: Any) -> str:
        seen.append(self.request.id)
        if len(seen) >= 3:
            enough.set()
        return self.request.headers[HEADER_TICK]

    async with app.worker(beat=True, concurrency=4), asyncio.timeout(20):
        await enough.wait()
    assert len(seen) == len(set(seen))
    tick_at = await app.AsyncResult(seen[0]).get(timeout=10)
    assert seen[0] == tick_task_id(tick.name, datetime.fromisoformat(tick_at))
