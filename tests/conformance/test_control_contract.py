"""The control-channel contract: every broker's channel must pass every test here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from asyncq.brokers import Broker
from asyncq.brokers.base import BrokerDefaults
from asyncq.brokers.control import (
    CONTROL_CHANNELS,
    NEEDS_CONTROL_URL,
    ControlChannel,
    ControlRequest,
    control_channel_for,
)
from asyncq.exceptions import ConfigurationError
from tests.conformance.conftest import BROKER_PARAMS

TIMEOUT = 10.0

BrokerFactory = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def channels(
    broker_factory: BrokerFactory, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[ControlChannel]]]:
    made: list[ControlChannel] = []

    async def make() -> ControlChannel:
        broker = await broker_factory()
        # A log or a plain queue service keeps its control plane in another store (control_url).
        separate = urlsplit(broker.url).scheme in NEEDS_CONTROL_URL
        channel = control_channel_for(broker, f"sqlite:///{tmp_path / 'control.db'}" if separate else None)
        await channel.connect()
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.aclose()


def test_every_broker_scheme_has_a_channel() -> None:
    from asyncq.brokers import BROKERS

    assert set(CONTROL_CHANNELS) | NEEDS_CONTROL_URL == set(BROKERS)
    assert not set(CONTROL_CHANNELS) & NEEDS_CONTROL_URL
    assert {"memory", "sqlite", "redis", "rabbitmq"} <= {p.values[0] for p in BROKER_PARAMS.values()}


def test_unknown_scheme_is_refused() -> None:
    class Foreign(BrokerDefaults):  # a third-party broker with no channel of its own
        url = "foreign://x"

    with pytest.raises(ConfigurationError, match="no control channel"):
        control_channel_for(Foreign())  # type: ignore[arg-type]


async def _answer(channel: ControlChannel, worker: str, started: asyncio.Event) -> None:
    """Listen as ``worker``: answer each request with b"<worker>:<body>"."""
    async with aclosing(channel.listen(worker)) as requests:  # type: ignore[type-var]
        started.set()
        request: ControlRequest
        async for request in requests:
            await request.reply(worker.encode() + b":" + request.body)


async def _until_replies(channel: ControlChannel, body: bytes, count: int) -> list[bytes]:
    """Broadcast until ``count`` replies come back (listeners take a moment to subscribe)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        replies = await channel.broadcast(body, timeout=2.0, replies=count)
        if len(replies) >= count or asyncio.get_running_loop().time() > deadline:
            return replies


async def test_presence_lists_heartbeats_and_forgets_on_leave(
    channels: Callable[[], Awaitable[ControlChannel]],
) -> None:
    worker_side, client_side = await channels(), await channels()
    name = f"w-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()
    # Channels without storage answer presence from a listening worker.
    listener = asyncio.create_task(_answer(worker_side, name, started))
    try:
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await worker_side.beat(name, b'{"n": 1}', ttl=30.0)
        await worker_side.beat(name, b'{"n": 2}', ttl=30.0)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            records = {r.worker: r for r in await client_side.workers(timeout=1.0)}
            if name in records or asyncio.get_running_loop().time() > deadline:
                break
        assert records[name].info == b'{"n": 2}'
        assert records[name].expires - records[name].seen == pytest.approx(30.0, abs=0.5)
        await worker_side.leave(name)
        records = {r.worker: r for r in await client_side.workers(timeout=1.0)}
        assert name not in records
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_broadcast_reaches_every_listener_and_collects_replies(
    channels: Callable[[], Awaitable[ControlChannel]],
) -> None:
    a, b, client = await channels(), await channels(), await channels()
    started = [asyncio.Event(), asyncio.Event()]
    listeners = [
        asyncio.create_task(_answer(a, "wa", started[0])),
        asyncio.create_task(_answer(b, "wb", started[1])),
    ]
    try:
        for event in started:
            await asyncio.wait_for(event.wait(), TIMEOUT)
        replies = await _until_replies(client, b"ping", 2)
        assert sorted(replies) == [b"wa:ping", b"wb:ping"]
        # A second request gets its own replies, not the first one's.
        replies = await client.broadcast(b"again", timeout=TIMEOUT, replies=2)
        assert sorted(replies) == [b"wa:again", b"wb:again"]
    finally:
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)


async def test_broadcast_without_listeners_returns_nothing_after_the_timeout(
    channels: Callable[[], Awaitable[ControlChannel]],
) -> None:
    client = await channels()
    assert await client.broadcast(b"anyone?", timeout=0.3) == []


async def test_revocations_are_stored_for_later_readers_until_they_expire(
    channels: Callable[[], Awaitable[ControlChannel]],
) -> None:
    writer = await channels()
    kept, short = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    await writer.revoke([kept], expires=3600.0)
    await writer.revoke([short], expires=0.2)
    await asyncio.sleep(0.5)  # let the short one expire (an expiry is the thing under test)
    reader = await channels()  # a worker started after the revoke
    revoked = await reader.revoked()
    assert kept in revoked
    assert short not in revoked
