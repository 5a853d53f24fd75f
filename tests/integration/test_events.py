"""Task and worker events end to end: a real worker emits, ``app.events.stream()`` reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App
from asyncq.events import EventStream
from asyncq.exceptions import Reject
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - the fixture
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

TIMEOUT = 30.0


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def events_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    config: dict[str, Any] = {"event_flush_interval": 0.02, "task_default_retry_delay": 0.01}
    if request.param == "rabbitmq":  # queues unique per test (see below); results in SQLite
        # (the events are under test here, not rpc://, where a retried task's result was once
        # not seen within the timeout on a loaded machine)
        rabbitmq = request.getfixturevalue("rabbitmq_url")
        app = App("events", broker=rabbitmq, backend=f"sqlite:///{tmp_path / 'results.db'}", config=config)
        yield app
        await app.aclose()
        return
    if request.param == "postgres":  # its own schema on the shared server, dropped after
        server = require_service("postgres")
        schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
        app = App("events", broker=with_schema(server, schema), config=config)
        yield app
        await app.aclose()
        await drop_schema(server, schema)
        return
    if request.param != "redis":
        sqlite = f"sqlite:///{tmp_path / 'store.db'}?poll_interval=0.02"
        url = "memory://" if request.param == "memory" else sqlite
        app = App("events", broker=url, config=config)
        yield app
        await app.aclose()
        return
    url = require_service("redis")
    prefix = unique_prefix()
    options = {"key_prefix": prefix}
    app = App(
        "events",
        broker=url,
        config={**config, "broker_transport_options": options, "result_backend_transport_options": options},
    )
    yield app
    await app.aclose()
    await delete_prefix(url, prefix)


class Collector:
    """Reads app.events.stream() in the background; waits for conditions on what arrived."""

    def __init__(self, stream: EventStream) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._stream = stream
        self._task = asyncio.create_task(self._run())

    @classmethod
    async def start(cls, app: App) -> Collector:
        return cls(await app.events.subscribe())  # subscribed once this returns

    async def _run(self) -> None:
        async for event in self._stream:
            self.events.append(event)
            self._changed.set()

    def of(self, task_id: str) -> list[str]:
        """The worker's events of one task, in order (the producer's task-sent is another emitter's)."""
        return [e["type"] for e in self.events if e.get("uuid") == task_id and e["type"] != "task-sent"]

    def sent(self, task_id: str) -> int:
        return sum(1 for e in self.events if e.get("uuid") == task_id and e["type"] == "task-sent")

    async def wait_for(self, predicate: Any) -> None:
        async def run() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(run(), TIMEOUT)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


async def test_task_and_worker_events(events_app: App) -> None:
    app = events_app
    app.conf.task_send_sent_event = True
    queue = f"ev-{uuid.uuid4().hex[:8]}"
    attempts: list[int] = []

    @app.task(queue=queue)
    async def ok(x: int) -> int:
        return x

    @app.task(queue=queue)
    async def boom() -> None:
        raise ValueError("bad input")

    @app.task(queue=queue, bind=True, max_retries=1)
    async def flaky(self: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise self.retry(exc=KeyError("once"), countdown=0)
        return "second time"

    @app.task(queue=queue)
    async def refuse() -> None:
        raise Reject("not for me")

    await app.connect()
    collector = await Collector.start(app)
    try:
        async with app.worker(queues=[queue], send_events=True, hostname="w1"):
            await collector.wait_for(lambda: any(e["type"] == "worker-online" for e in collector.events))
            r_ok = await ok.enqueue(1)
            r_boom = await boom.enqueue()
            r_flaky = await flaky.enqueue()
            r_refuse = await refuse.enqueue()
            assert await r_ok.get(timeout=TIMEOUT) == 1
            assert await r_flaky.get(timeout=TIMEOUT) == "second time"
            await r_boom.get(timeout=TIMEOUT, propagate=False)
            await r_refuse.get(timeout=TIMEOUT, propagate=False)
            await collector.wait_for(lambda: "task-dead-lettered" in collector.of(r_refuse.id))
            await collector.wait_for(lambda: "task-failed" in collector.of(r_boom.id))
            await collector.wait_for(lambda: collector.of(r_flaky.id).count("task-succeeded") == 1)
            await collector.wait_for(lambda: "task-succeeded" in collector.of(r_ok.id))
            sent = (r_ok, r_boom, r_flaky, r_refuse)
            await collector.wait_for(lambda: all(collector.sent(r.id) == 1 for r in sent))
        await collector.wait_for(lambda: any(e["type"] == "worker-offline" for e in collector.events))
    finally:
        await collector.aclose()

    assert collector.of(r_ok.id) == ["task-received", "task-started", "task-succeeded"]
    assert collector.of(r_boom.id) == ["task-received", "task-started", "task-failed"]
    assert collector.of(r_flaky.id) == [
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert collector.of(r_refuse.id) == [
        "task-received",
        "task-started",
        "task-rejected",
        "task-dead-lettered",
    ]
    by_type = {(e["uuid"], e["type"]): e for e in collector.events if "uuid" in e}
    received = by_type[(r_ok.id, "task-received")]
    assert (received["name"], received["queue"], received["hostname"]) == (ok.name, queue, "w1")
    assert received["root_id"] == r_ok.id and received["retries"] == 0
    assert "args" not in received  # only with events_include_args
    assert by_type[(r_ok.id, "task-succeeded")]["runtime"] >= 0
    failed = by_type[(r_boom.id, "task-failed")]
    assert (failed["exception_type"], failed["exception_message"]) == ("ValueError", "bad input")
    retried = by_type[(r_flaky.id, "task-retried")]
    assert retried["retries"] == 0 and retried["exception_type"] == "KeyError"  # the failed attempt's
    assert by_type[(r_refuse.id, "task-rejected")]["reason"] == "not for me"
    assert "not for me" in by_type[(r_refuse.id, "task-dead-lettered")]["reason"]
    online = next(e for e in collector.events if e["type"] == "worker-online")
    assert online["hostname"] == "w1" and online["queues"] == [queue] and online["sw_ident"] == "asyncq"
    assert all(isinstance(e["timestamp"], float) for e in collector.events)


async def test_events_are_off_by_default_and_args_opt_in(events_app: App) -> None:
    app = events_app
    queue = f"ev-{uuid.uuid4().hex[:8]}"

    @app.task(queue=queue)
    async def echo(x: int) -> int:
        return x

    await app.connect()
    collector = await Collector.start(app)
    try:
        async with app.worker(queues=[queue]):  # events off: nothing is sent
            assert await (await echo.enqueue(1)).get(timeout=TIMEOUT) == 1
        app.conf.events_include_args = True
        async with app.worker(queues=[queue], send_events=True):
            sent = await echo.enqueue(7)
            assert await sent.get(timeout=TIMEOUT) == 7
            await collector.wait_for(lambda: "task-succeeded" in collector.of(sent.id))
    finally:
        await collector.aclose()
    assert collector.events[0]["type"] == "worker-online"  # nothing from the first worker
    received = next(e for e in collector.events if e["type"] == "task-received")
    assert (received["args"], received["kwargs"]) == ([7], {})
    assert collector.sent(sent.id) == 0  # task_send_sent_event is off


async def test_an_unreachable_bus_costs_warnings_not_failures(caplog: pytest.LogCaptureFixture) -> None:
    from asyncq.events import EventEmitter, event_bus_from_url
    from asyncq.message import Message

    # A port nothing listens on: connecting fails at once; the emitter logs and drops the batch.
    bus = event_bus_from_url("redis://127.0.0.1:1/0", retry_timeout=0.2, socket_connect_timeout=0.5)
    emitter = EventEmitter(bus, "w", include_args=False, flush_interval=0.01)
    await emitter.start()
    emitter.task_received(Message(id="1", task="t"))
    with caplog.at_level("WARNING", logger="asyncq.events.emitter"):
        await emitter.aclose()
    assert any("could not send 1 events" in r.getMessage() for r in caplog.records)
    await bus.aclose()


@pytest.mark.redis
async def test_the_emitter_opens_its_bus_when_it_starts_not_at_the_first_flush() -> None:
    from asyncq.events import EventEmitter
    from asyncq.events.redis import RedisEventBus

    class WatchedBus(RedisEventBus):
        """The real Redis bus, telling when it was connected."""

        opened = asyncio.Event()

        async def connect(self) -> None:
            await super().connect()
            self.opened.set()

    url = require_service("redis")
    bus = WatchedBus(url, key_prefix=unique_prefix())
    emitter = EventEmitter(bus, "w", include_args=False, flush_interval=0.01)
    await emitter.start()
    try:
        # No event yet, so no flush: only start() can have opened it (off the worker's busy path).
        await asyncio.wait_for(bus.opened.wait(), TIMEOUT)
    finally:
        await emitter.aclose()
        await bus.aclose()


@pytest.mark.redis
async def test_the_redis_stream_keeps_about_event_history_bytes_of_batches() -> None:
    url = require_service("redis")
    prefix = unique_prefix()
    app = App(
        "events",
        broker=url,
        config={"broker_transport_options": {"key_prefix": prefix}, "event_history_bytes": 20 * 5000},
    )
    try:
        bus = app.events.bus  # the app's: event_history_limit 10,000, so the bytes decide
        await bus.connect()
        for i in range(300):
            await bus.publish(b"%05d" % i + b"x" * 4995)  # 5,000 bytes each
        reader = await bus.subscribe(history=True)
        kept: list[bytes] = []
        try:
            async with asyncio.timeout(TIMEOUT):
                async for batch in reader:
                    kept.append(batch)
                    if batch.startswith(b"00299"):
                        break
        finally:
            await reader.aclose()
        # About 20 (MAXLEN ~ trims whole stream nodes), the newest.
        assert 20 <= len(kept) <= 40, len(kept)
        assert [batch[:5] for batch in kept] == [b"%05d" % i for i in range(300 - len(kept), 300)]
    finally:
        await app.aclose()
        await delete_prefix(url, prefix)
