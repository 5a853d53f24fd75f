"""redis:// result backend behaviour beyond the shared contract.

One shared subscription connection per backend, recovery when it is killed, expiry details,
error translation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from asyncq._redis import DRIVER_OPTION_NAMES
from asyncq.backends import backend_from_url
from asyncq.backends import redis as backend_module
from asyncq.backends.redis import RedisBackend
from asyncq.brokers import OutgoingMessage
from asyncq.brokers import redis as broker_module
from asyncq.brokers.redis import RedisBroker
from asyncq.exceptions import BackendConnectionError, BackendError, BrokerError, ConfigurationError
from tests.factories import connected
from tests.helpers import until

pytestmark = pytest.mark.redis

TIMEOUT = 15.0
Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
async def factory(redis_url: str, prefix: str, admin: Redis) -> AsyncIterator[Factory]:
    async with connected(lambda **options: RedisBackend(redis_url, key_prefix=prefix, **options)) as make:
        yield make


def test_options_and_registry() -> None:
    backend = backend_from_url("rediss://example:6380/1?key_prefix=app&ping_interval=5&ssl_cert_reqs=none")
    assert isinstance(backend, RedisBackend)
    assert (backend._prefix, backend._ping_interval) == ("app", 5.0)
    assert backend._redis.connection == {"ssl_cert_reqs": "none"}
    with pytest.raises(ConfigurationError, match=r"known:.*key_prefix"):
        RedisBackend("redis://example/0", visibility_timeout=3)


def test_a_url_shared_with_the_broker_may_carry_its_options() -> None:
    # An App's result backend follows its broker URL, options and all.
    url = "redis://example/0?visibility_timeout=3&poll_interval=0.5&key_prefix=app&ping_interval=4"
    backend = RedisBackend(url)
    assert (backend._prefix, backend._ping_interval, backend._redis.connection) == ("app", 4.0, {})
    broker = RedisBroker(url)
    assert (broker._visibility, broker._prefix) == (3.0, "app")
    with pytest.raises(ConfigurationError, match="visibility_tmeout"):
        RedisBackend("redis://example/0?visibility_tmeout=3")  # a typo is still refused
    assert {*backend_module.OPTIONS, *broker_module.OPTIONS} == DRIVER_OPTION_NAMES


async def listeners(admin: Redis, name: str) -> list[dict[str, Any]]:
    return [c for c in await admin.client_list() if c.get("name") == f"{name}:results"]


async def test_many_waiters_share_one_subscription_connection(factory: Factory, admin: Redis) -> None:
    name = f"asyncq-test-{uuid.uuid4().hex[:8]}"
    backend = await factory(client_name=name)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    shared = str(uuid.uuid4())
    waiters = [asyncio.create_task(backend.wait(tid, timeout=TIMEOUT)) for tid in ids]
    waiters += [asyncio.create_task(backend.wait(shared, timeout=TIMEOUT)) for _ in range(20)]

    async def all_subscribed() -> bool:
        found = await listeners(admin, name)
        return len(found) == 1 and int(found[0]["sub"]) == 201

    await until(all_subscribed)  # 201 channels (20 waiters share one) on ONE connection
    assert backend._listener is not None and len(backend._listener.channels) == 201
    writer = await factory()
    for tid in [*ids, shared]:
        await writer.set(tid, tid.encode(), final=True, ttl=60)
    results = await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT)
    assert results == [tid.encode() for tid in ids] + [shared.encode()] * 20

    async def all_unsubscribed() -> bool:
        found = await listeners(admin, name)
        return len(found) == 1 and int(found[0]["sub"]) == 0

    await until(all_unsubscribed)
    assert backend._listener.channels == {}


async def test_waiter_survives_a_killed_subscription_connection(factory: Factory, admin: Redis) -> None:
    name = f"asyncq-test-{uuid.uuid4().hex[:8]}"
    backend = await factory(client_name=name)
    writer = await factory()
    early, late = str(uuid.uuid4()), str(uuid.uuid4())
    waiting = [asyncio.create_task(backend.wait(tid, timeout=TIMEOUT)) for tid in (early, late)]

    async def subscribed(count: int) -> bool:
        found = await listeners(admin, name)
        return len(found) == 1 and int(found[0]["sub"]) == count

    await until(lambda: subscribed(2))
    (listener,) = await listeners(admin, name)
    await admin.client_kill_filter(_id=listener["id"])
    # Published while nobody listens: the reconnect must re-read the record, not wait for ever.
    await writer.set(early, b"while down", final=True, ttl=60)
    await until(lambda: subscribed(1))  # resubscribed on a new connection
    await writer.set(late, b"after", final=True, ttl=60)
    assert await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT) == [b"while down", b"after"]


async def test_aclose_wakes_waiters_with_none(factory: Factory) -> None:
    backend = await factory()
    waiters = [asyncio.create_task(backend.wait(str(uuid.uuid4()), timeout=None)) for _ in range(5)]
    await asyncio.sleep(0.1)
    await backend.aclose()
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [None] * 5


async def test_wait_with_zero_timeout_only_reads(factory: Factory) -> None:
    backend = await factory()
    tid = str(uuid.uuid4())
    assert await backend.wait(tid, timeout=0) is None
    await backend.set(tid, b"pending", final=False, ttl=60)
    assert await backend.wait(tid, timeout=0) is None
    await backend.set(tid, b"done", final=True, ttl=60)
    assert await backend.wait(tid, timeout=0) == b"done"


async def test_expiry_is_set_on_records_and_counters(factory: Factory, admin: Redis, prefix: str) -> None:
    backend = await factory()
    tid = str(uuid.uuid4())
    record_key = f"{prefix}:result:{{{tid}}}"
    await backend.set(tid, b"r", final=False, ttl=30)
    assert 0 < await admin.pttl(record_key) <= 30_000
    await backend.set(tid, b"r", final=True, ttl=None)
    assert await admin.pttl(record_key) == -1  # replaced: no expiry any more
    counter_key = f"{prefix}:counter:{{chord}}"
    assert await backend.incr("chord", 2, ttl=10) == 2
    assert 0 < await admin.pttl(counter_key) <= 10_000
    assert await backend.incr("chord", ttl=None) == 3
    assert await admin.pttl(counter_key) == -1


async def test_errors_are_translated(factory: Factory, admin: Redis, prefix: str) -> None:
    backend = await factory()
    await admin.rpush(f"{prefix}:counter:{{wrong}}", "a list, not a number")
    with pytest.raises(BackendError) as info:
        await backend.incr("wrong")
    assert not isinstance(info.value, BackendConnectionError)
    unreachable = RedisBackend("redis://127.0.0.1:1/0", retry_timeout=0.2, socket_connect_timeout=0.5)
    with pytest.raises(BackendConnectionError):
        await unreachable.get("x")
    await unreachable.aclose()


# -- subscribing ahead (expect) ---------------------------------------------------------------


async def numsub(admin: Redis, backend: RedisBackend, task_id: str) -> int:
    channel = backend._key(task_id)
    ((_, count),) = await admin.pubsub_numsub(channel)
    return int(count)


async def test_a_backend_that_never_waited_subscribes_nothing_ahead(factory: Factory, admin: Redis) -> None:
    backend = await factory()
    backend.expect("t1")  # a pure producer: no subscription connection, nothing to do
    assert backend._listener is None
    assert await numsub(admin, backend, "t1") == 0


async def test_expect_subscribes_ahead_and_a_later_wait_gets_the_record(
    factory: Factory, admin: Redis
) -> None:
    backend = await factory()
    assert await backend.wait("warm-up", timeout=0.01) is None  # the subscription connection is up
    backend.expect("t1")
    await until(lambda: numsub_is(admin, backend, "t1", 1))
    # The task finishes before anyone waits: the record is kept for the wait, no read needed.
    await backend.set("t1", b"done", final=True, ttl=60)
    listener = backend._listener
    assert listener is not None
    await until(lambda: listener.channels[backend._key("t1")].record == b"done")
    reads: list[int] = []
    flush = backend._gets._flush

    async def counting(keys: list[bytes]) -> list[bytes | None]:
        reads.append(len(keys))
        return await flush(keys)

    backend._gets._flush = counting  # type: ignore[method-assign]
    assert await backend.wait("t1", timeout=TIMEOUT) == b"done"
    assert reads == []
    await until(lambda: numsub_is(admin, backend, "t1", 0))  # the wait left: unsubscribed


async def test_arrival_is_done_when_the_record_comes_on_a_channel_subscribed_ahead(
    factory: Factory, admin: Redis
) -> None:
    backend = await factory()
    assert backend.arrival("t0") is None  # never waited: nothing subscribed ahead, nothing to race
    assert await backend.wait("warm-up", timeout=0.01) is None
    listener = backend._listener
    assert listener is not None
    await until(lambda: listener.live)
    assert backend.arrival("t1") is None  # not expected: no channel for it
    backend.expect("t1")
    arrival = backend.arrival("t1")
    assert arrival is not None and not arrival.done()
    await until(lambda: numsub_is(admin, backend, "t1", 1))
    await backend.set("t1", b"pending", final=False, ttl=60)  # stored only: finals are published
    await backend.set("t1", b"done", final=True, ttl=60)
    await asyncio.wait_for(arrival, TIMEOUT)
    assert await backend.wait("t1", timeout=TIMEOUT) == b"done"
    assert backend.arrival("t1") is None  # finished: nothing left to race


async def test_channels_subscribed_ahead_expire_and_are_capped(
    factory: Factory, admin: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "_PREPARED_TTL", 0.3)
    monkeypatch.setattr(backend_module, "_PREPARED_MAX", 3)
    backend = await factory()
    assert await backend.wait("warm-up", timeout=0.01) is None
    listener = backend._listener
    assert listener is not None
    await until(lambda: listener.live)  # expect() only acts on a live subscription
    for i in range(5):
        backend.expect(f"t{i}")
    assert sorted(channel.task_id for channel in listener.channels.values()) == ["t0", "t1", "t2"]
    await until(lambda: numsub_is(admin, backend, "t2", 1))
    # Nobody waited: after the ttl they are dropped and unsubscribed, and room is made again.
    await until(lambda: not listener.channels)
    for i in range(3):
        await until(lambda i=i: numsub_is(admin, backend, f"t{i}", 0))  # type: ignore[misc]
    backend.expect("t9")
    assert [channel.task_id for channel in listener.channels.values()] == ["t9"]


async def numsub_is(admin: Redis, backend: RedisBackend, task_id: str, expected: int) -> bool:
    return await numsub(admin, backend, task_id) == expected


@asynccontextmanager
async def published(
    redis_url: str, prefix: str, count: int
) -> AsyncIterator[tuple[RedisBroker, str, list[str]]]:
    """A connected broker with ``count`` messages published to a fresh queue: (broker, queue, ids)."""
    queue = f"q-{uuid.uuid4().hex[:12]}"
    async with connected(lambda **options: RedisBroker(redis_url, key_prefix=prefix, **options)) as make:
        broker = await make()
        ids = [str(uuid.uuid4()) for _ in range(count)]
        await broker.publish_many([OutgoingMessage(id=i, queue=queue, body=b"x") for i in ids])
        yield broker, queue, ids


async def test_a_final_record_and_its_ack_travel_together_record_first(
    factory: Factory, redis_url: str, prefix: str, admin: Redis
) -> None:
    backend = await factory()
    async with published(redis_url, prefix, 50) as (broker, queue, ids):
        inflight = f"{prefix}:{{{queue}}}:inflight".encode()
        async with admin.monitor() as monitor:
            deliveries = []
            async with aclosing(broker.consume([queue], prefetch=len(ids))) as it:
                for _ in ids:
                    deliveries.append(await asyncio.wait_for(anext(it), TIMEOUT))
                joint = [
                    backend.set_and_ack(d.id, b'{"status":"SUCCESS"}', ttl=60, delivery=d) for d in deliveries
                ]
                assert all(call is not None for call in joint)
                waits = [asyncio.ensure_future(backend.wait(i, timeout=TIMEOUT)) for i in ids[:3]]
                await asyncio.wait_for(asyncio.gather(*(call for call in joint if call)), TIMEOUT)
                woken = await asyncio.wait_for(asyncio.gather(*waits), TIMEOUT)
                assert woken == [b'{"status":"SUCCESS"}'] * 3
            # The server ran the records' SETs before the acks that removed their leases.
            stored = acked = 0
            async with asyncio.timeout(TIMEOUT):
                while acked < len(ids):
                    command = (await monitor.next_command())["command"]
                    if command.startswith(f"SET {prefix}:result:"):
                        stored += 1
                    elif command.startswith(f"ZREM {inflight.decode()} "):
                        acked += len(command.split()) - 2
                        assert acked <= stored, (acked, stored)
            assert stored == len(ids)
        assert await admin.zcard(inflight) == 0
        assert await backend.get_many(ids) == [b'{"status":"SUCCESS"}'] * len(ids)
        with pytest.raises(BrokerError, match="already settled"):
            await deliveries[0].ack()


async def test_a_record_and_an_ack_on_different_servers_do_not_travel_together(
    redis_url: str, prefix: str, admin: Redis
) -> None:
    queue = f"q-{uuid.uuid4().hex[:12]}"
    other_db = redis_url.rsplit("/", 1)[0] + "/1"
    async with (
        connected(lambda **options: RedisBroker(redis_url, key_prefix=prefix, **options)) as brokers,
        connected(lambda **options: RedisBackend(other_db, key_prefix=prefix, **options)) as backends,
    ):
        broker, backend = await brokers(), await backends()
        await broker.publish(OutgoingMessage(id="t1", queue=queue, body=b"x"))
        async with aclosing(broker.consume([queue], prefetch=1)) as it:
            delivery = await asyncio.wait_for(anext(it), TIMEOUT)
            assert backend.set_and_ack("t1", b"{}", ttl=60, delivery=delivery) is None
            assert backend.set_and_ack("t1", b"{}", ttl=60, delivery=object()) is None
            await delivery.ack()  # still open: the caller settles it apart


async def test_a_pair_queued_behind_a_flush_in_flight_is_settled_by_that_flush(
    factory: Factory, redis_url: str, prefix: str, admin: Redis
) -> None:
    backend = await factory()
    async with published(redis_url, prefix, 20) as (broker, queue, ids):
        settled: list[tuple[str, BaseException | None]] = []
        async with aclosing(broker.consume([queue], prefetch=len(ids))) as it:
            deliveries = [await asyncio.wait_for(anext(it), TIMEOUT) for _ in ids]
            # Nothing in flight: nothing is queued, the delivery stays open for set_and_ack.
            assert not backend.queue_set_and_ack(
                ids[0], b"{}", ttl=60, delivery=deliveries[0], then=lambda d, e: settled.append((d.id, e))
            )
            first = asyncio.ensure_future(
                _awaited(backend.set_and_ack(ids[0], b"{}", ttl=60, delivery=deliveries[0]))
            )
            await asyncio.sleep(0)  # one step: its flush is sent, its reply cannot be read before the next
            assert backend._joint._group.busy
            queued = [
                backend.queue_set_and_ack(
                    d.id,
                    b'{"status":"SUCCESS"}',
                    ttl=60,
                    delivery=d,
                    then=lambda d, e: settled.append((d.id, e)),
                )
                for d in deliveries[1:]
            ]
            assert all(queued)
            await asyncio.wait_for(first, TIMEOUT)
            await until(lambda: len(settled) == len(ids) - 1)
        assert sorted(settled, key=lambda pair: pair[0]) == sorted((i, None) for i in ids[1:])
        assert await admin.zcard(f"{prefix}:{{{queue}}}:inflight") == 0
        assert await backend.get_many(ids[1:]) == [b'{"status":"SUCCESS"}'] * (len(ids) - 1)
        with pytest.raises(BrokerError, match="already settled"):
            await deliveries[1].ack()


async def _awaited(call: Awaitable[None] | None) -> None:
    assert call is not None
    await call
