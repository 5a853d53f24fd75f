"""SQLite-specific behaviour of sqlite:// (broker and backend) beyond the shared contract.

Covers URL and option parsing, file creation, sharing between OS processes, lease renewal,
group commit, hand-back of buffered claims, and the backend's expiry and shared poller.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

import asyncq._sqlite as sqlite_plumbing
import asyncq.brokers.sqlite as sqlite_broker
from asyncq import App
from asyncq.backends import backend_from_url
from asyncq.backends.sqlite import SQLiteBackend
from asyncq.brokers import Delivery, OutgoingMessage, broker_from_url
from asyncq.brokers.sqlite import SQLiteBroker
from asyncq.exceptions import BackendConnectionError, BrokerConnectionError, BrokerError, ConfigurationError
from tests.factories import connected
from tests.helpers import until

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]
POLLER = "asyncq.sqlite.results-poller"


def msg(queue: str, body: bytes = b"x", **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body, **kw)


def url_for(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "asyncq.db"


@pytest.fixture
async def open_broker(db: Path) -> AsyncIterator[Callable[..., Any]]:
    async with connected(lambda **options: SQLiteBroker(url_for(db), **options)) as make:
        yield make


@pytest.fixture
async def open_backend(db: Path) -> AsyncIterator[Callable[..., Any]]:
    async with connected(lambda **options: SQLiteBackend(url_for(db), **options)) as make:
        yield make


async def take(it: AsyncIterator[Delivery], timeout: float = TIMEOUT) -> Delivery:
    return await asyncio.wait_for(anext(it), timeout)


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the database directly, as an outside observer (call through asyncio.to_thread)."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def pollers() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == POLLER and not task.done()]


# -- URL and options -------------------------------------------------------------------------


def test_relative_path_is_resolved_against_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert SQLiteBroker("sqlite:///data/q.db").path == Path(os.getcwd()) / "data" / "q.db"
    assert SQLiteBackend("sqlite:///my%20dir/r.db").path == Path(os.getcwd()) / "my dir" / "r.db"


def test_absolute_path(tmp_path: Path) -> None:
    assert SQLiteBroker(f"sqlite:///{tmp_path}/q.db").path == tmp_path / "q.db"  # four slashes
    assert isinstance(broker_from_url(url_for(tmp_path / "q.db")), SQLiteBroker)
    assert isinstance(backend_from_url(url_for(tmp_path / "q.db")), SQLiteBackend)


def test_query_options_and_explicit_options_win(db: Path) -> None:
    broker = SQLiteBroker(url_for(db, "visibility_timeout=7&poll_interval=0.2"))
    assert (broker.visibility_timeout, broker.poll_interval) == (7.0, 0.2)
    broker = SQLiteBroker(url_for(db, "visibility_timeout=7"), visibility_timeout=3)
    assert (broker.visibility_timeout, broker.poll_interval) == (3.0, 0.05)
    # One URL serves broker and backend: the backend skips the broker's query option.
    assert SQLiteBackend(url_for(db, "visibility_timeout=7&poll_interval=0.5")).poll_interval == 0.5


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda url: SQLiteBroker(url, visibilty_timeout=1), "visibilty_timeout"),
        (lambda url: SQLiteBroker(url + "?timeout=1"), "timeout"),
        (lambda url: SQLiteBackend(url, visibility_timeout=1), "visibility_timeout"),
    ],
)
def test_unknown_option_is_refused_naming_the_known_ones(db: Path, make, bad: str) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"unknown sqlite .*option '{bad}'.*; known: .*poll_interval"
    ):
        make(url_for(db))


@pytest.mark.parametrize("value", [0, -1, "abc", "", True])
def test_bad_option_values_are_refused(db: Path, value: object) -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        SQLiteBroker(url_for(db), visibility_timeout=value)


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_in_memory_database_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteBroker(url)
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteBackend(url)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/q.db"])
def test_url_without_a_path_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:////absolute/path\.db"):
        SQLiteBroker(url)


# -- files -----------------------------------------------------------------------------------


async def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "asyncq.db"
    broker, backend = SQLiteBroker(url_for(path)), SQLiteBackend(url_for(path))
    await broker.connect()
    await backend.connect()
    try:
        await broker.publish(msg("q"))
        await backend.set("t", b"r", final=True, ttl=None)  # one file serves both, as by default
        assert path.is_file()
        assert await broker.queue_length("q") == 1
        assert await backend.get("t") == b"r"
    finally:
        await broker.aclose()
        await backend.aclose()


async def test_unopenable_path_raises_connection_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    path = blocker / "asyncq.db"
    with pytest.raises(BrokerConnectionError, match=str(path)):
        await SQLiteBroker(url_for(path)).connect()
    with pytest.raises(BackendConnectionError, match=str(path)):
        await SQLiteBackend(url_for(path)).connect()
    with pytest.raises(BrokerConnectionError, match=str(blocker)):
        await SQLiteBroker(url_for(blocker)).connect()  # exists, but is not a database


async def test_instances_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    # Switching a new file to WAL can fail at once with SQLITE_BUSY, without waiting on the busy
    # handler, while another connection opens it: a worker and a producer starting together.
    for attempt in range(100):
        url = url_for(tmp_path / f"fresh-{attempt}.db")
        drivers = [SQLiteBroker(url), SQLiteBroker(url), SQLiteBackend(url)]
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(d.connect() for d in drivers), return_exceptions=True), TIMEOUT
            )
        finally:
            for driver in drivers:
                await driver.aclose()
        assert [o for o in outcomes if o is not None] == [], f"attempt {attempt}"


async def test_use_before_connect_raises_broker_error(db: Path) -> None:
    with pytest.raises(BrokerError, match="connect"):
        await SQLiteBroker(url_for(db)).queue_length("q")


# -- several processes -----------------------------------------------------------------------

CONSUMER = """
import asyncio, json, sys
from contextlib import aclosing
from asyncq.brokers.sqlite import SQLiteBroker

async def main(url, queue, count):
    broker = SQLiteBroker(url)
    await broker.connect()
    got = []
    async with aclosing(broker.consume([queue], prefetch=10)) as deliveries:
        async for delivery in deliveries:
            got.append([delivery.body.decode(), delivery.delivery_count])
            await delivery.ack()
            if len(got) == count:
                break
    await broker.aclose()
    print(json.dumps(got))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

PRODUCER = """
import asyncio, sys, uuid
from asyncq.brokers import OutgoingMessage
from asyncq.brokers.sqlite import SQLiteBroker

async def main(url, queue, count):
    broker = SQLiteBroker(url)
    await broker.connect()
    messages = [OutgoingMessage(str(uuid.uuid4()), queue, str(i).encode()) for i in range(count)]
    await broker.publish(messages[0])
    await broker.publish_many(messages[1:])
    await broker.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

RESULT_WRITER = """
import asyncio, sys
from asyncq.backends.sqlite import SQLiteBackend

async def main(url, task_id):
    backend = SQLiteBackend(url)
    await backend.connect()
    await backend.set(task_id, b"from another process", final=True, ttl=60)
    await backend.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def run_python(script: str, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, f"child process failed with exit code {process.returncode}"
    return stdout.decode()


async def test_one_process_publishes_another_consumes_and_acks(db: Path, open_broker) -> None:
    count = 200
    consumer = await run_python(CONSUMER, url_for(db), "shared", str(count))
    producer = await run_python(PRODUCER, url_for(db), "shared", str(count))
    await finish(producer)
    got = json.loads(await finish(consumer))
    assert sorted(int(body) for body, _ in got) == list(range(count))
    assert {deliveries for _, deliveries in got} == {1}
    observer: SQLiteBroker = await open_broker()
    assert await observer.queue_length("shared") == 0


async def test_backend_wait_wakes_on_a_write_from_another_process(db: Path, open_backend) -> None:
    reader: SQLiteBackend = await open_backend(poll_interval=0.02)
    task_id = str(uuid.uuid4())
    waiter = asyncio.create_task(reader.wait(task_id, timeout=60), name="test.wait")
    await finish(await run_python(RESULT_WRITER, url_for(db), task_id))
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"from another process"


# -- broker: leases, claims, group commit ----------------------------------------------------


async def test_heartbeat_keeps_a_claim_across_many_visibility_timeouts(db: Path, open_broker) -> None:
    owner: SQLiteBroker = await open_broker(visibility_timeout=0.5)
    other: SQLiteBroker = await open_broker(visibility_timeout=0.5, poll_interval=0.02)
    await owner.publish(msg("long", b"slow job"))
    async with aclosing(owner.consume(["long"], prefetch=1)) as mine:
        delivery = await take(mine)
        async with aclosing(other.consume(["long"], prefetch=1)) as theirs:
            pending = asyncio.ensure_future(anext(theirs))
            done, _ = await asyncio.wait({pending}, timeout=2.5)  # five visibility timeouts
            assert not done, "the live owner's claim was taken over"
            rows = await asyncio.to_thread(query, db, "SELECT deliveries, locked_until FROM asyncq_messages")
            assert len(rows) == 1 and rows[0][0] == 1 and rows[0][1] > time.time()
            await delivery.nack()  # handed back: the other consumer gets it, as its second delivery
            again = await asyncio.wait_for(pending, TIMEOUT)
            assert (again.body, again.delivery_count) == (b"slow job", 2)
            await again.ack()


async def test_closing_the_iterator_hands_back_claimed_but_unyielded_rows(open_broker) -> None:
    first: SQLiteBroker = await open_broker()
    await first.publish_many([msg("q", str(i).encode()) for i in range(5)])
    async with aclosing(first.consume(["q"], prefetch=5)) as it:
        held = await take(it)  # claims all five in one batch, yields one
    assert held.body == b"0"
    assert await first.queue_length("q") == 4  # the yielded one stays claimed until settled
    second: SQLiteBroker = await open_broker()
    async with aclosing(second.consume(["q"], prefetch=5)) as it:
        rest = [await take(it) for _ in range(4)]
        assert [(d.body, d.delivery_count) for d in rest] == [(str(i).encode(), 1) for i in range(1, 5)]
        for delivery in rest:
            await delivery.ack()
    await held.ack()
    assert await first.queue_length("q") == 0


async def test_settling_twice_raises(open_broker) -> None:
    broker: SQLiteBroker = await open_broker()
    await broker.publish(msg("q"))
    async with aclosing(broker.consume(["q"], prefetch=1)) as it:
        delivery = await take(it)
        await delivery.ack()
        with pytest.raises(BrokerError, match="already settled"):
            await delivery.nack()


async def test_concurrent_acks_are_group_committed(open_broker, monkeypatch) -> None:
    batches = []
    commit_batch = sqlite_plumbing._commit_batch

    def counting(conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        batches.append(len(ops))
        return commit_batch(conn, ops)

    broker: SQLiteBroker = await open_broker()
    await broker.publish_many([msg("bulk", str(i).encode()) for i in range(1000)])
    async with aclosing(broker.consume(["bulk"], prefetch=1000)) as it:
        deliveries = [await take(it) for _ in range(1000)]
        monkeypatch.setattr(sqlite_plumbing, "_commit_batch", counting)
        await asyncio.wait_for(asyncio.gather(*(d.ack() for d in deliveries)), TIMEOUT)
    assert sum(batches) == 1000
    assert len(batches) <= 10, f"1000 concurrent acks took {len(batches)} transactions"
    assert await broker.queue_length("bulk") == 0


async def test_a_tight_publish_loop_still_lets_the_event_loop_run(open_broker) -> None:
    # Lone publishes commit inside the await; a loop of them must yield now and then all the
    # same (the heartbeat and the wake-up pokes run on the loop).
    broker: SQLiteBroker = await open_broker()
    other_ran = asyncio.Event()
    published_before = []

    async def other() -> None:
        published_before.append(await broker.queue_length("tight"))
        other_ran.set()

    task = asyncio.create_task(other())
    for i in range(500):
        await broker.publish(msg("tight", str(i).encode()))
    await asyncio.wait_for(other_ran.wait(), TIMEOUT)
    await task
    assert published_before and published_before[0] < 500
    assert await broker.queue_length("tight") == 500


async def test_sequential_publishes_each_commit_before_returning(open_broker) -> None:
    broker: SQLiteBroker = await open_broker()
    reader = sqlite3.connect(broker.path)
    try:
        for i in range(100):
            await broker.publish(msg("seen", str(i).encode()))
            # Another connection sees it at once: the await returned after the commit.
            (count,) = reader.execute("SELECT COUNT(*) FROM asyncq_messages WHERE queue = 'seen'").fetchone()
            assert count == i + 1
    finally:
        reader.close()


async def test_idle_consumer_wakes_at_the_eta_not_at_the_next_poll(open_broker) -> None:
    producer: SQLiteBroker = await open_broker()
    consumer: SQLiteBroker = await open_broker(poll_interval=5.0)  # another instance: no in-process wake
    eta = time.time() + 0.3
    await producer.publish(msg("later", eta=eta))
    async with aclosing(consumer.consume(["later"], prefetch=1)) as it:
        delivery = await take(it, timeout=3.0)
        assert eta - 0.05 <= time.time() < eta + 2.0
        await delivery.ack()


async def test_a_settle_wakes_only_a_consumer_waiting_for_room(open_broker, monkeypatch) -> None:
    claims: list[int] = []
    claim = sqlite_broker._claim

    def counting(conn: sqlite3.Connection, *args: Any) -> Any:
        claimed = claim(conn, *args)
        claims.append(len(claimed[0]))
        return claimed

    monkeypatch.setattr(sqlite_broker, "_claim", counting)
    producer: SQLiteBroker = await open_broker()
    consumer: SQLiteBroker = await open_broker(poll_interval=30.0)  # only pokes wake it
    await producer.publish(msg("roomy", b"1"))
    async with aclosing(consumer.consume(["roomy"], prefetch=2)) as it:
        first = await take(it)
        second = asyncio.ensure_future(anext(it))  # a free slot: waits for messages
        await until(lambda: len(claims) == 2, "the claim that finds nothing")
        await first.ack()  # frees a slot, but brings no message: no claim for it
        await producer.publish(msg("roomy", b"2"))
        assert (await asyncio.wait_for(second, TIMEOUT)).body == b"2"
        assert claims == [1, 0, 1]
        await (second.result()).ack()
    claims.clear()
    async with aclosing(consumer.consume(["full"], prefetch=1)) as it:
        await producer.publish(msg("full", b"1"))
        first = await take(it)
        pending = asyncio.ensure_future(anext(it))  # no free slot: waits for a settle
        await producer.publish(msg("full", b"2"))  # its poke finds no room: no claim
        await first.ack()
        assert (await asyncio.wait_for(pending, TIMEOUT)).body == b"2"
        await (pending.result()).ack()
    assert 0 not in claims[1:], f"a claim found nothing: {claims}"


# -- backend ---------------------------------------------------------------------------------


async def test_expired_rows_are_invisible_and_swept(db: Path, open_backend) -> None:
    backend: SQLiteBackend = await open_backend()
    task_id, key = str(uuid.uuid4()), f"chord-{uuid.uuid4()}"
    await backend.set(task_id, b"short-lived", final=True, ttl=0.3)
    assert await backend.incr(key, 5, ttl=0.3) == 5
    await until(lambda: backend.get(task_id), "the record to be visible")
    await until(lambda: _is_none(backend.get(task_id)), "the record to expire")
    await until(lambda: _equals(backend.incr(key, 0, ttl=0.3), 0), "the counter to expire")
    assert await backend.get_many([task_id]) == [None]
    assert await backend.wait(task_id, timeout=0.1) is None
    assert await backend.incr(key, ttl=60) == 1  # an expired counter restarts at zero
    # Expired rows linger on disk until a sweep; opening a backend runs one.
    await open_backend()
    rows = await asyncio.to_thread(query, db, "SELECT task_id FROM asyncq_results WHERE task_id = ?", task_id)
    assert rows == []


async def _is_none(value: Any) -> bool:
    return await value is None


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_wait_wakes_on_a_write_from_another_instance(open_backend) -> None:
    reader: SQLiteBackend = await open_backend(poll_interval=0.02)
    writer: SQLiteBackend = await open_backend()
    task_id = str(uuid.uuid4())
    waiter = asyncio.create_task(reader.wait(task_id, timeout=TIMEOUT), name="test.wait")
    await writer.set(task_id, b"progress", final=False, ttl=60)
    done, _ = await asyncio.wait({waiter}, timeout=0.3)
    assert not done, "a non-final record woke the waiter"
    await writer.set(task_id, b"result", final=True, ttl=60)
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"result"
    assert await reader.wait(task_id, timeout=0) == b"result"  # zero means "if final already"


async def test_one_poller_serves_many_waiters_and_stops_when_none_wait(open_backend) -> None:
    reader: SQLiteBackend = await open_backend(poll_interval=0.02)
    writer: SQLiteBackend = await open_backend()
    ids = [str(uuid.uuid4()) for _ in range(50)]
    waiters = [asyncio.create_task(reader.wait(tid, timeout=TIMEOUT), name="test.wait") for tid in ids]
    await until(lambda: pollers(), "the poller to start")
    await until(lambda: all(tid in reader._waiters for tid in ids), "every waiter to register")
    assert len(pollers()) == 1
    for tid in ids:
        await writer.set(tid, tid.encode(), final=True, ttl=60)
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [tid.encode() for tid in ids]
    await until(lambda: not pollers(), "the poller to stop once nobody waits")


async def test_aclose_wakes_pending_waits_with_none(open_backend) -> None:
    backend: SQLiteBackend = await open_backend()
    waiters = [
        asyncio.create_task(backend.wait(str(uuid.uuid4()), timeout=None), name="test.wait") for _ in range(3)
    ]
    await until(lambda: len(backend._waiters) == 3, "the waiters to register")
    await backend.aclose()
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [None, None, None]


@pytest.mark.parametrize("driver", ["broker", "backend"])
async def test_open_of_a_locked_file_fails_within_connect_timeout_in_one_line(db: Path, driver: str) -> None:
    # A real second connection holds an exclusive lock on a fresh (rollback-journal) file:
    # reading its schema, let alone switching it to WAL, must wait for it.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    error = BrokerConnectionError if driver == "broker" else BackendConnectionError
    store = SQLiteBroker(url_for(db), connect_timeout=0.3) if driver == "broker" else None
    backend = SQLiteBackend(url_for(db), connect_timeout=0.3) if driver == "backend" else None
    try:
        # Bounded well below a statement's own busy wait: the open honours connect_timeout.
        async with asyncio.timeout(sqlite_plumbing.BUSY_TIMEOUT - 1):
            with pytest.raises(error) as caught:
                await (store or backend).connect()  # type: ignore[union-attr]
        message = str(caught.value)
        assert "\n" not in message and str(db) in message
        assert "another connection held a lock on it for connect_timeout=0.3s" in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Nothing was lost or left half-open: once the lock is gone, the same instance connects.
    opened = store or backend
    assert opened is not None
    await asyncio.wait_for(opened.connect(), TIMEOUT)
    await opened.aclose()


async def test_app_passes_broker_connection_timeout_to_sqlite(db: Path) -> None:
    app = App("locked", broker=url_for(db), config={"broker_connection_timeout": 0.4})
    assert app.broker.path == db  # type: ignore[attr-defined]
    assert app.broker._db.open_timeout == 0.4  # type: ignore[attr-defined]
    assert app.backend._db.open_timeout == 0.4  # type: ignore[attr-defined]
    await app.aclose()


def test_connect_timeout_option_is_validated(db: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"sqlite broker option connect_timeout=0: expected a number > 0"
    ):
        SQLiteBroker(url_for(db), connect_timeout=0)


# -- the delayed-messages index --------------------------------------------------------------


async def test_only_delayed_messages_are_in_the_delayed_index_and_both_are_delivered(
    open_broker: Callable[..., Any], db: Path
) -> None:
    broker = await open_broker(poll_interval=5.0)
    eta = time.time() + 0.3
    await broker.publish(msg("q", b"later", eta=eta))
    await broker.publish(msg("q", b"now"))
    indexed = await asyncio.to_thread(
        query,
        db,
        "SELECT COUNT(*) FROM asyncq_messages INDEXED BY asyncq_messages_delayed"
        " WHERE queue = 'q' AND available_at > 0",
    )
    assert indexed == [(1,)]
    async with aclosing(broker.consume(["q"], prefetch=2)) as deliveries:
        first = await take(deliveries)
        assert first.body == b"now"
        await first.ack()
        # The only row left is delayed: the consumer sleeps until its due time (read through the
        # index), not the 5 s poll interval.
        second = await take(deliveries, timeout=3.0)
        assert second.body == b"later"
        assert time.time() >= eta
        await second.ack()


async def test_a_file_of_an_older_version_loses_its_full_due_index_and_keeps_its_rows(
    open_broker: Callable[..., Any], db: Path
) -> None:
    broker = await open_broker()
    await broker.aclose()

    def downgrade() -> None:  # the index and a row as an older version wrote them
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE INDEX asyncq_messages_due ON asyncq_messages (queue, available_at)")
            conn.execute(
                "INSERT INTO asyncq_messages (id, queue, body, priority, available_at)"
                " VALUES ('old', 'q', x'6f6c64', 0, ?)",
                (time.time() - 1,),
            )

    await asyncio.to_thread(downgrade)
    reopened = await open_broker()
    names = await asyncio.to_thread(query, db, "SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("asyncq_messages_due",) not in names
    assert ("asyncq_messages_delayed",) in names
    async with aclosing(reopened.consume(["q"], prefetch=1)) as deliveries:
        delivery = await take(deliveries)
        assert (delivery.id, delivery.body) == ("old", b"old")
        await delivery.ack()


async def test_a_late_settle_does_not_touch_a_later_message_given_the_same_seq(
    open_broker: Callable[..., Any], db: Path
) -> None:
    first, other = await open_broker(), await open_broker()
    await first.publish(msg("q", b"one"))
    async with aclosing(first.consume(["q"], prefetch=1)) as mine:
        stale = await take(mine)
        # Its lease lapses (the clock, moved by hand), another consumer takes the message and acks it.
        await asyncio.to_thread(query, db, "UPDATE asyncq_messages SET locked_until = 0")
        async with aclosing(other.consume(["q"], prefetch=1)) as theirs:
            again = await take(theirs)
            assert again.id == stale.id
            await again.ack()
        await first.publish(msg("q", b"two"))
        (seq,) = await asyncio.to_thread(query, db, "SELECT seq FROM asyncq_messages")
        assert seq == (1,)  # the freed seq, given again: the stale lease's seq, owner and count
    async with aclosing(first.consume(["q"], prefetch=1)) as mine_again:
        current = await take(mine_again)
        assert (current.body, current.delivery_count) == (b"two", 1)
        await stale.ack()  # late: it must not settle "two"
        assert await asyncio.to_thread(query, db, "SELECT body FROM asyncq_messages") == [(b"two",)]
        await current.ack()
    assert await asyncio.to_thread(query, db, "SELECT COUNT(*) FROM asyncq_messages") == [(0,)]
