"""The multiplexed Redis connection (asyncq._resp) against the real server.

Concurrent callers share one socket and must each get their own replies, in every case:
error replies, callers that give up, a connection that closes under them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncq._resp import Multiplexed, open_multiplexed, pack_commands
from asyncq.brokers import OutgoingMessage
from asyncq.brokers.redis import RedisBroker
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

pytestmark = pytest.mark.redis

TIMEOUT = 15.0


@pytest.fixture
def address() -> tuple[str, int]:
    parts = urlsplit(require_service("redis"))
    return parts.hostname or "127.0.0.1", parts.port or 6379


@pytest.fixture
async def mux(address: tuple[str, int]) -> AsyncIterator[Multiplexed]:
    connection = await open_multiplexed(*address, name="test", db=9)
    yield connection
    connection.close()


async def call(mux: Multiplexed, *commands: tuple[object, ...]) -> list[object]:
    return await asyncio.wait_for(mux.call(pack_commands(commands), len(commands)), TIMEOUT)


async def test_concurrent_callers_each_get_their_own_replies(mux: Multiplexed) -> None:
    async def one(i: int) -> None:
        if i % 3:
            assert await call(mux, ("ECHO", f"v{i}")) == [f"v{i}".encode()]
        else:  # a pipeline of three among single commands
            replies = await call(mux, ("ECHO", f"a{i}"), ("ECHO", f"b{i}"), ("ECHO", f"c{i}"))
            assert replies == [f"a{i}".encode(), f"b{i}".encode(), f"c{i}".encode()]

    await asyncio.gather(*(one(i) for i in range(2000)))


async def test_error_replies_come_back_in_place_as_redis_py_errors(mux: Multiplexed) -> None:
    key = f"mux-{uuid.uuid4().hex}"
    try:
        replies = await call(
            mux, ("SET", key, "v"), ("LPUSH", key, "x"), ("EVALSHA", "0" * 40, 0), ("GET", key)
        )
        assert replies[0] == b"OK"
        assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
        assert isinstance(replies[2], NoScriptError)  # mapped, so callers can reload scripts
        assert replies[3] == b"v"
    finally:
        await call(mux, ("DEL", key))


async def test_a_caller_that_gives_up_leaves_the_others_matched(mux: Multiplexed) -> None:
    abandoned = asyncio.ensure_future(mux.call(pack_commands([("ECHO", "lost")]), 1))
    await asyncio.sleep(0)  # written, reply not read yet
    abandoned.cancel()
    assert await call(mux, ("ECHO", "next")) == [b"next"]
    assert abandoned.cancelled()


async def test_closing_fails_the_callers_in_flight(mux: Multiplexed) -> None:
    waiting = asyncio.ensure_future(mux.call(pack_commands([("ECHO", "x")]), 1))
    await asyncio.sleep(0)
    mux.close()
    with pytest.raises(RedisConnectionError):
        await waiting
    assert not mux.usable
    with pytest.raises(RedisConnectionError):
        await call(mux, ("PING",))


async def test_a_server_that_stops_answering_fails_the_connection_in_time(address: tuple[str, int]) -> None:
    paused = await open_multiplexed(*address, name="t", timeout=0.3)
    admin = Redis(host=address[0], port=address[1])
    try:
        # Redis answers nobody for 3 s: without the deadline the PING would just come late.
        await admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        with pytest.raises(RedisTimeoutError, match=r"within 0\.3s"):
            await call(paused, ("PING",))
        assert not paused.usable  # its replies can no longer be matched: never reused
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        paused.close()


async def test_handshake_selects_the_db_and_names_the_connection(
    mux: Multiplexed, address: tuple[str, int]
) -> None:
    named = await open_multiplexed(*address, name="t", db=7, client_name=f"mux-{uuid.uuid4().hex[:8]}")
    try:
        (info,) = await call(named, ("CLIENT", "INFO"))
        assert isinstance(info, bytes)
        assert b" db=7 " in info and b" name=mux-" in info
    finally:
        named.close()


async def test_a_refused_password_is_raised(address: tuple[str, int]) -> None:
    # The shared server has no password: AUTH is refused, and the refusal is the error.
    with pytest.raises((AuthenticationError, ResponseError)):
        await open_multiplexed(*address, name="t", password="wrong")


async def test_a_killed_connection_is_replaced_and_the_broker_carries_on() -> None:
    url = require_service("redis")
    prefix = unique_prefix()
    name = f"mux-kill-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url, key_prefix=prefix, client_name=name)
    admin = Redis.from_url(url)
    try:
        async with broker:
            await broker.publish(OutgoingMessage(id="1", queue="q", body=b"a"))
            killed = [c for c in await admin.client_list() if c.get("name") == name]
            assert killed, "the broker's multiplexed connection is named like the client"
            for client in killed:
                await admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            await broker.publish(OutgoingMessage(id="2", queue="q", body=b"b"))  # reconnects
            assert await broker.queue_length("q") == 2
    finally:
        await admin.aclose()
        await delete_prefix(url, prefix)


async def test_a_retried_publish_stores_nothing_twice() -> None:
    url = require_service("redis")
    prefix = unique_prefix()
    broker = RedisBroker(url, key_prefix=prefix)
    try:
        async with broker:
            one = broker._publish_calls([OutgoingMessage(id="1", queue="q", body=b"a")])
            batch = broker._publish_calls(
                [OutgoingMessage(id=str(i), queue="q", body=b"b", priority=i % 3) for i in range(3)]
            )
            for calls in (one, batch, one, batch):  # each sent twice: a reply was lost, say
                await broker._redis.pipeline("publish", calls)
            assert await broker.queue_length("q") == 4
            async with aclosing(broker.consume(["q"], prefetch=10)) as deliveries:
                got = [await asyncio.wait_for(anext(deliveries), TIMEOUT) for _ in range(4)]
                assert sorted(d.id for d in got) == ["0", "1", "1", "2"]
                for delivery in got:
                    await delivery.ack()
            assert await broker.queue_length("q") == 0
    finally:
        await delete_prefix(url, prefix)


async def test_scripts_flushed_while_a_consumer_waits() -> None:
    # The claim sent behind the consumer's BLPOP finds its script gone (a restart, SCRIPT
    # FLUSH): the consumer claims again itself, which loads it, and nothing is missed.
    url = require_service("redis")
    prefix = unique_prefix()
    broker = RedisBroker(url, key_prefix=prefix, poll_interval=30)
    admin = Redis.from_url(url)
    try:
        async with broker, aclosing(broker.consume(["q"], prefetch=1)) as deliveries:
            taking = asyncio.ensure_future(anext(deliveries))
            await asyncio.sleep(0.3)  # blocked, with its claim queued behind the BLPOP
            await admin.script_flush()
            await broker.publish(OutgoingMessage(id="1", queue="q", body=b"a"))
            delivery = await asyncio.wait_for(taking, TIMEOUT)
            assert delivery.body == b"a"
            await delivery.ack()
    finally:
        await admin.aclose()
        await delete_prefix(url, prefix)
