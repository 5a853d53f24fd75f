"""Helpers every kind of test shares: bounded waits on a condition, and Redis key prefixes.

Tests wait for an event, never for a fixed time: :func:`wait_for` (sync, for fixtures and
subprocess tests) and :func:`until` (async, predicate plain or awaitable) poll a condition
every 50 ms and fail naming what they waited for once ``timeout`` passes; :func:`until_drained`
waits for a queue to report nothing left on any broker.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from asyncq.brokers.base import Broker

#: The default bound of a wait, in seconds (generous: the test machine is shared and slow).
TIMEOUT = 30.0

#: How often a wait re-checks its condition.
POLL_INTERVAL = 0.05


def wait_for(
    predicate: Callable[[], bool],
    what: str = "condition",
    timeout: float = TIMEOUT,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``predicate()`` until true; fail the test naming ``what`` after ``timeout`` seconds.

    Exceptions listed in ``ignore`` count as "not yet" (a server still starting refuses
    connections).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except ignore:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


async def until(
    predicate: Callable[[], object | Awaitable[object]],
    what: str = "condition",
    timeout: float = TIMEOUT,
) -> None:
    """Await until ``predicate()`` (plain or async) is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


async def until_drained(
    broker: Broker, queue: str, timeout: float = TIMEOUT, *, not_before: float = 0.0
) -> None:
    """Await until ``queue`` on the connected ``broker`` has nothing left (``queue_length`` 0).

    What it counts is the broker's: waiting messages (a lapsed lease's too), and on a log
    (Kafka) every record not yet committed. A message leased by a consumer that died is in
    none of them until its lease lapses: an empty count before ``not_before`` (a
    ``time.monotonic()`` value, e.g. the kill plus the visibility timeout) does not count.
    """

    async def drained() -> bool:
        return time.monotonic() >= not_before and await broker.queue_length(queue) == 0

    await until(drained, what=f"queue {queue!r} to drain", timeout=timeout)


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix() -> str:
    """A key prefix no other test uses (hex only: safe inside a SCAN pattern)."""
    return f"asyncq-test-{uuid.uuid4().hex[:12]}"


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; return how many (``url``: any Redis URL asyncq takes)."""
    from redis.asyncio import Redis, RedisCluster  # redis is an extra: only Redis tests need it
    from redis.asyncio.sentinel import Sentinel

    scheme, _, rest = url.partition("://")
    first_host = rest.split(",")[0].split("/")[0]
    host, _, port = first_host.partition(":")
    if scheme == "redis+cluster":
        cluster = RedisCluster(host=host, port=int(port))
        try:
            await cluster.initialize()
            deleted = 0
            for node in cluster.get_primaries():
                async for key in cluster.scan_iter(match=f"{prefix}:*", count=1000, target_nodes=node):
                    deleted += await cluster.delete(key)
            return deleted
        finally:
            await cluster.aclose()
    if scheme == "redis+sentinel":
        sentinel = Sentinel([(host, int(port))])
        try:
            master_host, master_port = await sentinel.discover_master(rest.split("/")[1])
        finally:
            await sentinel.aclose()
        url = f"redis://{master_host}:{master_port}/0"
    client = Redis.from_url(url)
    try:
        deleted = 0
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            deleted += await client.delete(key)
        return deleted
    finally:
        await client.aclose()
