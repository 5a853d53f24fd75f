"""The event-bus contract: every registered event bus must pass every test here.

Each factory makes buses sharing one store (the same process, file, key prefix or vhost), as
separate worker and monitor processes would. Batches carry a token unique to the test: on
RabbitMQ the session's vhost, and so its exchange, is shared by every test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncq.brokers import BROKERS
from asyncq.brokers.control import NEEDS_CONTROL_URL
from asyncq.events.bus import EVENT_BUSES, EventBus, EventReader, event_bus_from_url
from tests.conformance.drivers_postgres import postgres_url  # noqa: F401 - fixture
from tests.conformance.drivers_redis import delete_prefix, unique_prefix
from tests.services import require_service

TIMEOUT = 10.0
BusFactory = Callable[..., Awaitable[EventBus]]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis_cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
        pytest.param("redis_sentinel", marks=[pytest.mark.redis, pytest.mark.slow]),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def bus_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusFactory]:
    made: list[EventBus] = []
    shared: EventBus | None = None
    prefix = unique_prefix()
    if request.param == "memory":
        url, options = "memory://", {}
    elif request.param == "sqlite":
        url, options = f"sqlite:///{tmp_path / 'events.db'}?visibility_timeout=5", {"poll_interval": 0.02}
    elif request.param == "redis":
        url, options = require_service("redis"), {"key_prefix": prefix, "visibility_timeout": 5}
    elif request.param.startswith("redis_"):  # servers the tests start (drivers_redis.py)
        url, options = request.getfixturevalue(request.param).url, {"key_prefix": prefix}
    elif request.param == "postgres":  # a schema of its own, dropped after (drivers_postgres.py)
        url, options = request.getfixturevalue("postgres_url"), {"visibility_timeout": 5}
    else:
        url, options = request.getfixturevalue("rabbitmq_url"), {"queue_type": "classic"}

    async def make(**extra: Any) -> EventBus:
        nonlocal shared
        if request.param == "memory" and shared is not None:
            return shared  # one process, one bus
        bus = event_bus_from_url(url, **options, **extra)
        await bus.connect()
        made.append(bus)
        shared = bus
        return bus

    yield make
    for bus in made:
        await bus.aclose()
    if request.param.startswith("redis"):
        await delete_prefix(url, prefix)


@pytest.fixture
def token() -> bytes:
    return uuid.uuid4().hex.encode()


async def collect(reader: EventReader, token: bytes, count: int) -> list[bytes]:
    """The next ``count`` batches of this test (others' are skipped), within TIMEOUT."""
    got: list[bytes] = []

    async def run() -> None:
        async for batch in reader:
            if batch.startswith(token):
                got.append(batch[len(token) :])
                if len(got) == count:
                    return

    await asyncio.wait_for(run(), TIMEOUT)
    return got


def test_every_broker_scheme_has_an_event_bus() -> None:
    missing = set(BROKERS) - set(EVENT_BUSES) - NEEDS_CONTROL_URL  # those use control_url's bus
    assert not missing, f"broker schemes without an event bus: {missing}"


async def test_every_reader_gets_every_batch_in_order(bus_factory: BusFactory, token: bytes) -> None:
    emitter, monitor = await bus_factory(), await bus_factory()
    first, second = await monitor.subscribe(), await emitter.subscribe()
    try:
        for i in range(30):
            await emitter.publish(token + b"%d" % i)
        expected = [b"%d" % i for i in range(30)]
        assert await collect(first, token, 30) == expected
        assert await collect(second, token, 30) == expected
    finally:
        await first.aclose()
        await second.aclose()


async def test_history_is_kept_and_bounded(bus_factory: BusFactory, token: bytes) -> None:
    bus = await bus_factory(history_limit=5)
    if not bus.keeps_history:
        pytest.skip(f"{bus.url}: keeps_history is False")
    for i in range(300):
        await bus.publish(token + b"%d" % i)
    late = await (await bus_factory(history_limit=5)).subscribe(history=True)
    live = await bus.subscribe()
    try:
        await bus.publish(token + b"new")
        kept = await collect(late, token, 1)
        while kept[-1] != b"new":
            kept += await collect(late, token, 1)
        old = kept[:-1]
        # Five kept, "new" among them (read lazily); Redis trims approximately (MAXLEN ~).
        assert 4 <= len(old) < 300
        assert old == [b"%d" % i for i in range(300 - len(old), 300)]
        assert await collect(live, token, 1) == [b"new"]  # no history without asking
    finally:
        await late.aclose()
        await live.aclose()


async def test_closed_reader_ends(bus_factory: BusFactory, token: bytes) -> None:
    bus = await bus_factory()
    never_read = await bus.subscribe()
    await never_read.aclose()  # closing an unread reader is fine
    reader = await bus.subscribe()
    await bus.publish(token + b"one")
    assert await collect(reader, token, 1) == [b"one"]
    await reader.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(reader), TIMEOUT)
    await reader.aclose()  # idempotent
