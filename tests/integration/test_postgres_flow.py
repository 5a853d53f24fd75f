"""Fair queuing and unique locks in the postgresql:// broker, beyond the shared contract.

Covers the migration of a version-1 schema (rows kept, the claim index replaced), fair
messages published inside the caller's transaction (ranked at commit, gone on rollback),
concurrent fair publishers of one key, fair publishers beside claimers, and the vacuum's
clean-up of expired unique locks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import asyncpg
import pytest

from asyncq._postgres import Database, parse_postgres_url
from asyncq.brokers import OutgoingMessage, broker_from_url
from asyncq.brokers.postgres import OPTIONS, PostgresBroker
from asyncq.brokers.postgres_sql import MIGRATIONS
from asyncq.exceptions import BrokerConnectionError, BrokerError
from asyncq.unique.store import lock_store_for
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.helpers import until
from tests.services import require_service

pytestmark = pytest.mark.postgres

TIMEOUT = 10.0


def msg(queue: str, body: bytes = b"x", **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body, **kw)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A broker URL with a fresh schema, dropped afterwards."""
    server = require_service("postgres")
    schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
    yield with_schema(server, schema)
    await drop_schema(server, schema)


@pytest.fixture
async def broker(url: str) -> AsyncIterator[PostgresBroker]:
    made = broker_from_url(url)
    assert isinstance(made, PostgresBroker)
    await made.connect()
    yield made
    await made.aclose()


async def drain(broker: PostgresBroker, queue: str, count: int) -> list[bytes]:
    bodies = []
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        for _ in range(count):
            delivery = await asyncio.wait_for(anext(it), TIMEOUT)
            bodies.append(delivery.body)
            await delivery.ack()
    return bodies


async def test_version_1_schema_migrates_and_keeps_its_rows(url: str) -> None:
    dsn, settings = parse_postgres_url(url, {}, OPTIONS, kind="broker")
    old = Database(url, dsn, settings, error=BrokerError, connection_error=BrokerConnectionError)
    await old.open("broker", MIGRATIONS[:1])
    jobs = old.names.table("jobs")
    await old.run(
        "seed",
        lambda c: c.execute(
            f"INSERT INTO {jobs} (id, queue, body, available_at) VALUES ('old', 'q', 'kept', 0)"
        ),
    )
    await old.close()

    broker = broker_from_url(url)
    assert isinstance(broker, PostgresBroker)
    assert await broker.migrate() == [2]
    try:
        schema = broker.database.names.schema
        indexes = await broker.database.run(
            "indexes",
            lambda c: c.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema),
        )
        names = {row[0] for row in indexes}
        assert "asyncq_jobs_ranked" in names and "asyncq_jobs_ready" not in names
        await broker.publish_many([msg("q", b"a%d" % i, fair_key="a") for i in range(3)])
        await broker.publish_many([msg("q", b"b0", fair_key="b")])
        # The old row is plain (rank 0): first; then b's turn comes right after a's first.
        assert await drain(broker, "q", 5) == [b"kept", b"a0", b"b0", b"a1", b"a2"]
    finally:
        await broker.aclose()


async def test_fair_publish_in_transaction(broker: PostgresBroker, url: str) -> None:
    conn = await asyncpg.connect(url.split("?")[0], timeout=10)
    try:
        async with conn.transaction():
            await broker.publish_in_transaction(conn, [msg("t", b"a%d" % i, fair_key="a") for i in range(4)])
        tx = conn.transaction()
        await tx.start()
        await broker.publish_in_transaction(conn, [msg("t", b"gone", fair_key="c")])
        await tx.rollback()
        async with conn.transaction():
            await broker.publish_in_transaction(conn, [msg("t", b"b0", fair_key="b")])
    finally:
        await conn.close(timeout=10)
    assert await broker.queue_length("t") == 5
    assert await broker.active_fair_keys("t") == 2  # a and b; the rolled-back c left nothing
    assert await drain(broker, "t", 5) == [b"a0", b"b0", b"a1", b"a2", b"a3"]
    # The clock passed b's finish tag: its row is gone; a's is one turn ahead of the last claim.
    keys = broker.database.names.table("fair_keys")
    rows = await broker.database.run("keys", lambda c: c.fetch(f"SELECT key, finish FROM {keys}"))
    assert [tuple(row) for row in rows] == [("a", 4.0)]


async def test_concurrent_publishers_of_one_key_never_share_a_turn(broker: PostgresBroker, url: str) -> None:
    others = [broker_from_url(url) for _ in range(3)]
    for other in others:
        await other.connect()
    try:
        # Three instances publish key x at once, one message per statement; y arrives after.
        await asyncio.gather(
            *(other.publish(msg("c", b"x", fair_key="x")) for _ in range(5) for other in others)
        )
        await others[0].publish(msg("c", b"y", fair_key="y"))
    finally:
        for other in others:
            await other.aclose()
    jobs = broker.database.names.table("jobs")
    ranks = await broker.database.run(
        "ranks",
        lambda c: c.fetch(f"SELECT rank FROM {jobs} WHERE body = 'x' ORDER BY rank"),
    )
    assert [row[0] for row in ranks] == [float(i) for i in range(15)]  # each x its own turn
    assert (await drain(broker, "c", 2))[1] == b"y"  # y's first turn is the clock's: next


async def test_vacuum_drops_expired_unique_locks(broker: PostgresBroker) -> None:
    store = lock_store_for(broker)
    assert await store.acquire("short", "t1", 0.05) == "t1"
    assert await store.acquire("long", "t2", 60) == "t2"
    assert await store.acquire("long", "t3", 60) == "t2"  # held: the holder's id
    await until(lambda: _is_free(store, "short"), "the short lock to expire")
    await broker._vacuum()
    locks = broker.database.names.table("unique_locks")
    rows = await broker.database.run("locks", lambda c: c.fetch(f"SELECT key FROM {locks}"))
    assert [row[0] for row in rows] == ["long"]
    assert await store.release("long", "t3") is False  # not the holder: compare-and-delete
    assert await store.release("long", "t2") is True
    assert await store.holder("long") is None


async def _is_free(store: Any, key: str) -> bool:
    return await store.holder(key) is None


async def test_fair_publishers_and_claimers_side_by_side(broker: PostgresBroker, url: str) -> None:
    # Batches of several keys published while two instances claim: every message once, no error.
    peers = [broker_from_url(url) for _ in range(3)]
    for peer in peers:
        await peer.connect()
    batches, size = 20, 6
    got: list[bytes] = []

    async def produce(peer: Any, n: int) -> None:
        for b in range(batches):
            await peer.publish_many(
                [msg("s", b"%d-%d-%d" % (n, b, i), fair_key="abc"[i % 3]) for i in range(size)]
            )

    async def consume(peer: Any) -> None:
        async with aclosing(peer.consume(["s"], prefetch=4)) as it:
            async for delivery in it:
                got.append(delivery.body)
                await delivery.ack()

    consumers = [asyncio.create_task(consume(peer), name="test.consume") for peer in (broker, peers[2])]
    try:
        await asyncio.gather(produce(peers[0], 0), produce(peers[1], 1))
        await until(lambda: len(got) >= 2 * batches * size, "every message to be delivered")
        assert sorted(got) == sorted(
            b"%d-%d-%d" % (n, b, i) for n in range(2) for b in range(batches) for i in range(size)
        )
        assert not any(task.done() for task in consumers)  # no claim failed
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        for peer in peers:
            await peer.aclose()
