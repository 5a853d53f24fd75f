"""LeaseReclaimer: a dead holder's leases are released at once, a live (or paused) one's never."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from asyncq.brokers import Broker, Delivery, OutgoingMessage, broker_from_url
from asyncq.brokers.control import LeaseHolder, LeaseReclaimer, control_channel_for
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

TIMEOUT = 10.0


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("redis", marks=pytest.mark.redis)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    prefix = unique_prefix()
    yield f"{require_service('redis')}?key_prefix={prefix}"
    await delete_prefix(require_service("redis"), prefix)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


async def take_one(broker: Broker, queue: str) -> tuple[Delivery, Any]:
    consumer = broker.consume([queue], prefetch=1)
    delivery = await asyncio.wait_for(anext(consumer), TIMEOUT)
    return delivery, consumer


async def test_dead_holders_leases_come_back_at_once_and_live_ones_stay(url: str) -> None:
    queue = f"reclaim-{uuid.uuid4().hex[:8]}"
    holder_broker, live_broker, rescuer = (broker_from_url(url) for _ in range(3))
    for broker in (holder_broker, live_broker, rescuer):
        await broker.connect()
    channel = control_channel_for(rescuer)
    await channel.connect()
    assert isinstance(channel, LeaseReclaimer)
    consumers: list[Any] = []
    try:
        await rescuer.publish_many([OutgoingMessage(str(uuid.uuid4()), queue, b"a")])
        await rescuer.publish_many([OutgoingMessage(str(uuid.uuid4()), queue, b"b")])
        dead_one, c1 = await take_one(holder_broker, queue)
        live_one, c2 = await take_one(live_broker, queue)
        consumers += [c1, c2]
        host = socket.gethostname()
        dead_owner: str = holder_broker._owner  # type: ignore[attr-defined]
        live_owner: str = live_broker._owner  # type: ignore[attr-defined]
        if url.startswith("redis"):
            # Redis judges by connections: the holder's process is gone when its broker is.
            for consumer in consumers[:1]:
                with contextlib.suppress(Exception):
                    await consumer.aclose()
            await holder_broker.aclose()
        holders = [
            LeaseHolder("dead", dead_owner, host, dead_pid(), True, (queue,)),
            # Alive (this very process), even though it missed its heartbeats (paused).
            LeaseHolder("paused", live_owner, host, os.getppid(), True, (queue,)),
        ]
        released: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not released and asyncio.get_running_loop().time() < deadline:
            released = await channel.release_dead(holders)
            await asyncio.sleep(0.2)
        assert released == {"dead": 1}
        async with aclosing(rescuer.consume([queue], prefetch=5)) as again:
            redelivered = await asyncio.wait_for(anext(again), TIMEOUT)
            assert redelivered.body == dead_one.body and redelivered.delivery_count == 2
            await redelivered.ack()
            assert await rescuer.queue_length(queue) == 0  # the live holder's message stayed leased
        await live_one.ack()
    finally:
        for consumer in consumers:
            with contextlib.suppress(Exception):
                await consumer.aclose()
        await channel.aclose()
        for broker in (holder_broker, live_broker, rescuer):
            await broker.aclose()
