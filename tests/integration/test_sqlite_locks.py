"""How the sqlite:// drivers wait for locks and keep the WAL in check (asyncq/_sqlite.py).

Short calls may run on the event loop when the connection's thread is idle; one that meets
another connection's write lock must go to the thread and wait there, never on the loop.
Commits do not checkpoint (wal_autocheckpoint is off): a checkpoint thread does, every
CHECKPOINT_EVERY writes, so the WAL stays bounded.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import aclosing
from pathlib import Path

import pytest

import asyncq._sqlite as sqlite_plumbing
from asyncq.backends.sqlite import SQLiteBackend
from asyncq.brokers import OutgoingMessage
from asyncq.brokers.sqlite import SQLiteBroker
from tests.factories import connected

from .test_sqlite_drivers import take, url_for

TIMEOUT = 10.0


def msg(queue: str, body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "asyncq.db"


async def ticks_while(pending: asyncio.Future[object], count: int) -> int:
    """Let the loop tick ``count`` times while ``pending`` is not done; return how many ran."""
    ran = 0
    while ran < count and not pending.done():
        await asyncio.sleep(0.01)
        ran += 1
    return ran


async def test_a_write_meeting_another_connections_lock_waits_off_the_loop(db: Path) -> None:
    async with connected(lambda: SQLiteBroker(url_for(db))) as make:
        broker: SQLiteBroker = await make()
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
            publish = asyncio.ensure_future(broker.publish(msg("locked", b"waited")))
            # The loop keeps running while the publish waits (on the thread) for the lock.
            assert await ticks_while(publish, 10) == 10
            assert not publish.done()
            holder.execute("ROLLBACK")
            await asyncio.wait_for(publish, TIMEOUT)
        finally:
            holder.close()
        async with aclosing(broker.consume(["locked"], prefetch=1)) as deliveries:
            delivery = await take(deliveries)
            assert delivery.body == b"waited"
            await delivery.ack()


async def test_a_claim_and_a_result_meeting_a_lock_wait_off_the_loop(db: Path) -> None:
    async with connected(lambda: SQLiteBroker(url_for(db))) as make_broker:
        broker: SQLiteBroker = await make_broker()
        await broker.publish(msg("claimed", b"1"))
        async with connected(lambda: SQLiteBackend(url_for(db))) as make_backend:
            backend: SQLiteBackend = await make_backend()
            holder = sqlite3.connect(db, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                async with aclosing(broker.consume(["claimed"], prefetch=1)) as deliveries:
                    claim = asyncio.ensure_future(take(deliveries))
                    stored = asyncio.ensure_future(backend.set("tid", b"done", final=True, ttl=60))
                    assert await ticks_while(asyncio.gather(claim, stored), 10) == 10
                    holder.execute("ROLLBACK")
                    delivery = await asyncio.wait_for(claim, TIMEOUT)
                    await asyncio.wait_for(stored, TIMEOUT)
                    await delivery.ack()
            finally:
                holder.close()
            assert await backend.get("tid") == b"done"


def wal_frames(db: Path) -> int:
    """Frames in the WAL now (a passive checkpoint from outside reports them, and may copy some)."""
    with sqlite3.connect(db) as conn:
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


async def test_the_wal_stays_bounded_without_autocheckpoints(db: Path) -> None:
    writes = 5 * sqlite_plumbing.CHECKPOINT_EVERY
    async with connected(lambda: SQLiteBroker(url_for(db))) as make:
        broker: SQLiteBroker = await make()
        for i in range(writes):  # one transaction each, most of them on the event loop
            await broker.publish(msg("wal", str(i).encode()))
        assert await broker.queue_length("wal") == writes
        frames = await asyncio.to_thread(wal_frames, db)
    # Each insert writes several pages: without checkpoints the WAL would hold them all.
    assert frames < 2 * sqlite_plumbing.CHECKPOINT_EVERY * 4, f"{frames} frames after {writes} writes"


async def test_the_wal_stays_bounded_with_two_writers(db: Path) -> None:
    # Each instance's checkpoints race the other's writes: one that cannot copy everything is
    # tried again soon, so that one finds a quiet moment and the WAL starts over.
    writes = 5 * sqlite_plumbing.CHECKPOINT_EVERY
    async with connected(lambda: SQLiteBroker(url_for(db))) as make:
        first: SQLiteBroker = await make()
        second: SQLiteBroker = await make()

        async def publish(broker: SQLiteBroker, queue: str) -> None:
            for i in range(writes):
                await broker.publish(msg(queue, str(i).encode()))

        await asyncio.gather(publish(first, "one"), publish(second, "two"))
        frames = await asyncio.to_thread(wal_frames, db)
    bound = sqlite_plumbing._WAL_RESTART_FRAMES + 2 * sqlite_plumbing.CHECKPOINT_EVERY * 4
    assert frames < bound, f"{frames} frames after {2 * writes} writes"
