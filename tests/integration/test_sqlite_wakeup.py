"""Cross-process wake-ups of the sqlite:// drivers (asyncq/_wakeup.py).

Every listener here polls only every 30 s, so a message or result that arrives within the test's
timeout can only have come through a poke. Fallbacks (stale sockets, a deleted or unusable
wake-up directory, a path too long for AF_UNIX) must keep the drivers working by polling.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from asyncq._wakeup import WakeupChannel, wakeup_dir
from asyncq.backends.sqlite import SQLiteBackend
from asyncq.brokers import Delivery, OutgoingMessage
from asyncq.brokers.sqlite import SQLiteBroker

from .test_sqlite_drivers import PRODUCER, RESULT_WRITER, finish, run_python, until, url_for

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")

TIMEOUT = 10.0
SLOW_POLL = 30.0  # longer than any wait below: only a poke can beat it


def msg(queue: str, body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body)


def sockets(db: Path, channel: str) -> list[Path]:
    directory = wakeup_dir(db)
    return sorted(directory.glob(f"{channel}.*")) if directory.is_dir() else []


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "asyncq.db"


@pytest.fixture
async def opened(db: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[SQLiteBroker | SQLiteBackend] = []

    async def make(kind: type[SQLiteBroker] | type[SQLiteBackend], path: Path = db, **options: Any) -> Any:
        driver = kind(url_for(path), **options)
        await driver.connect()
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.aclose()


async def test_a_publish_from_another_process_wakes_an_idle_consumer(db: Path, opened) -> None:
    broker: SQLiteBroker = await opened(SQLiteBroker, poll_interval=SLOW_POLL)
    async with aclosing(broker.consume(["woken"], prefetch=1)) as deliveries:
        pending = asyncio.ensure_future(anext(deliveries))
        await until(lambda: sockets(db, "messages"), "the consumer's wake-up socket")
        # The child takes far longer to start than the consumer's first (empty) claim.
        await finish(await run_python(PRODUCER, url_for(db), "woken", "3"))
        delivery: Delivery = await asyncio.wait_for(pending, TIMEOUT)
        assert delivery.body == b"0"
        await delivery.ack()


async def test_a_result_from_another_process_wakes_a_waiting_caller(db: Path, opened) -> None:
    backend: SQLiteBackend = await opened(SQLiteBackend, poll_interval=SLOW_POLL)
    task_id = str(uuid.uuid4())
    waiter = asyncio.create_task(backend.wait(task_id, timeout=60), name="test.wait")
    await until(lambda: sockets(db, "results"), "the waiter's wake-up socket")
    await finish(await run_python(RESULT_WRITER, url_for(db), task_id))
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"from another process"


async def test_every_listening_instance_is_woken(db: Path, opened) -> None:
    first: SQLiteBroker = await opened(SQLiteBroker, poll_interval=SLOW_POLL)
    second: SQLiteBroker = await opened(SQLiteBroker, poll_interval=SLOW_POLL)
    producer: SQLiteBroker = await opened(SQLiteBroker)
    async with (
        aclosing(first.consume(["a"], prefetch=1)) as a,
        aclosing(second.consume(["b"], prefetch=1)) as b,
    ):
        got_a, got_b = asyncio.ensure_future(anext(a)), asyncio.ensure_future(anext(b))
        await until(lambda: len(sockets(db, "messages")) == 2, "both wake-up sockets")
        await asyncio.sleep(0.2)  # let both first claims find nothing and go to sleep
        await producer.publish_many([msg("a", b"to a"), msg("b", b"to b")])
        assert (await asyncio.wait_for(got_a, TIMEOUT)).body == b"to a"
        assert (await asyncio.wait_for(got_b, TIMEOUT)).body == b"to b"


async def test_nobody_listening_means_no_wakeup_directory(db: Path, opened) -> None:
    producer: SQLiteBroker = await opened(SQLiteBroker)
    backend: SQLiteBackend = await opened(SQLiteBackend)
    await producer.publish(msg("q"))
    await backend.set("t", b"r", final=True, ttl=None)
    await asyncio.sleep(0)  # pokes are sent on the next loop iteration
    assert not wakeup_dir(db).exists()


async def test_stale_sockets_of_dead_processes_are_removed_and_live_ones_still_poked(
    db: Path, opened
) -> None:
    wakeup_dir(db).mkdir()
    stale = wakeup_dir(db) / "messages.0123456789abcdef"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # as a killed process leaves it: the file stays, nobody reads it
    assert stale.exists()
    consumer: SQLiteBroker = await opened(SQLiteBroker, poll_interval=SLOW_POLL)
    producer: SQLiteBroker = await opened(SQLiteBroker)
    async with aclosing(consumer.consume(["q"], prefetch=1)) as deliveries:
        pending = asyncio.ensure_future(anext(deliveries))
        await until(lambda: len(sockets(db, "messages")) == 2, "the live socket beside the stale one")
        await asyncio.sleep(0.2)  # let the first claim find nothing and go to sleep
        await producer.publish(msg("q", b"past the stale one"))
        assert (await asyncio.wait_for(pending, TIMEOUT)).body == b"past the stale one"
        await until(lambda: not stale.exists(), "the stale socket's removal")


async def test_a_deleted_wakeup_directory_falls_back_to_polling_then_rebinds(db: Path, opened) -> None:
    consumer: SQLiteBroker = await opened(SQLiteBroker, poll_interval=0.1)
    producer: SQLiteBroker = await opened(SQLiteBroker)
    async with aclosing(consumer.consume(["q"], prefetch=1)) as deliveries:
        pending = asyncio.ensure_future(anext(deliveries))
        await until(lambda: sockets(db, "messages"), "the consumer's wake-up socket")
        shutil.rmtree(wakeup_dir(db))
        await producer.publish(msg("q", b"found by polling"))
        delivery = await asyncio.wait_for(pending, TIMEOUT)
        assert delivery.body == b"found by polling"
        await delivery.ack()
        pending = asyncio.ensure_future(anext(deliveries))
        await until(lambda: sockets(db, "messages"), "a new wake-up socket after a poll")
        pending.cancel()


async def test_an_unusable_wakeup_directory_falls_back_to_polling(db: Path, opened) -> None:
    wakeup_dir(db).write_text("a file where the directory should be")
    consumer: SQLiteBroker = await opened(SQLiteBroker, poll_interval=0.1)
    backend: SQLiteBackend = await opened(SQLiteBackend, poll_interval=0.1)
    producer: SQLiteBroker = await opened(SQLiteBroker)
    writer: SQLiteBackend = await opened(SQLiteBackend)
    await producer.publish(msg("q", b"polled"))
    async with aclosing(consumer.consume(["q"], prefetch=1)) as deliveries:
        assert (await asyncio.wait_for(anext(deliveries), TIMEOUT)).body == b"polled"
    waiter = asyncio.create_task(backend.wait("t", timeout=60), name="test.wait")
    await asyncio.sleep(0.2)
    await writer.set("t", b"done", final=True, ttl=None)
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"done"


async def test_a_path_too_long_for_a_unix_socket_falls_back_to_polling(tmp_path: Path, opened) -> None:
    deep = tmp_path / ("d" * 120) / "asyncq.db"
    assert not WakeupChannel(deep, "messages").listen(lambda: None)
    consumer: SQLiteBroker = await opened(SQLiteBroker, deep, poll_interval=0.1)
    producer: SQLiteBroker = await opened(SQLiteBroker, deep)
    async with aclosing(consumer.consume(["q"], prefetch=1)) as deliveries:
        pending = asyncio.ensure_future(anext(deliveries))
        await producer.publish(msg("q", b"long path"))
        assert (await asyncio.wait_for(pending, TIMEOUT)).body == b"long path"
    assert not wakeup_dir(deep).exists()


async def test_a_listener_that_joins_right_after_a_poke_gets_the_next_one(db: Path) -> None:
    # The directory's mtime may not change within one clock tick: the writer must not trust a
    # listing as fresh as the socket bound right after it.
    db.parent.mkdir(exist_ok=True)
    writer = WakeupChannel(db, "messages")
    first, second = WakeupChannel(db, "messages"), WakeupChannel(db, "messages")
    woken = {"first": asyncio.Event(), "second": asyncio.Event()}
    try:
        assert first.listen(woken["first"].set)
        writer.poke()
        await asyncio.wait_for(woken["first"].wait(), TIMEOUT)
        assert second.listen(woken["second"].set)
        writer.poke()
        await asyncio.wait_for(woken["second"].wait(), TIMEOUT)
    finally:
        for channel in (writer, first, second):
            channel.close()
    assert not sockets(db, "messages")
