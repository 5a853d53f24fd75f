"""PostgreSQL-specific behaviour of postgresql:// (broker and backend) beyond the shared contract.

Covers URL and option parsing, the versioned schema and ``asyncq migrate``, the table prefix,
wake-ups by NOTIFY, transactional enqueue through the caller's asyncpg connection, the clear
errors for a connection the broker cannot take, and the backend's clean-up of expired rows.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from asyncq import App
from asyncq.backends import backend_from_url
from asyncq.brokers import OutgoingMessage, broker_from_url
from asyncq.brokers.postgres import PostgresBroker
from asyncq.canvas import chain, chord, group
from asyncq.exceptions import BrokerConnectionError, ConfigurationError
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.services import require_service

pytestmark = pytest.mark.postgres

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]


def msg(queue: str, body: bytes = b"x", **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body, **kw)


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, str]]:
    """The server URL and a fresh schema, dropped afterwards."""
    url = require_service("postgres")
    schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
    yield url, schema
    await drop_schema(url, schema)


@pytest.fixture
async def conn(pg: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg[0], timeout=10)
    yield connection
    await connection.close(timeout=10)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="unknown postgresql broker option 'visibilty_timeout'"):
        broker_from_url("postgresql://h/db", visibilty_timeout=3)
    with pytest.raises(ConfigurationError, match="visibility_timeout='soon'"):
        broker_from_url("postgresql://h/db?visibility_timeout=soon")
    with pytest.raises(ConfigurationError, match="schema='': expected a non-empty schema name"):
        backend_from_url("postgres://h/db?schema=")
    broker = broker_from_url("postgres://u:secret@h/db?sslmode=disable&schema=jobs&poll_interval=2")
    assert isinstance(broker, PostgresBroker) and broker.poll_interval == 2.0
    # asyncq's options are taken out; asyncpg's stay in the DSN.
    assert broker._db.dsn == "postgresql://u:secret@h/db?sslmode=disable"
    # One URL for broker and backend: each skips the other's options.
    shared = "postgresql://h/db?visibility_timeout=5&cleanup_interval=9"
    assert broker_from_url(shared)._db.dsn == "postgresql://h/db"  # type: ignore[attr-defined]
    assert backend_from_url(shared).cleanup_interval == 9.0  # type: ignore[attr-defined]


async def test_connect_deadline_and_redacted_error() -> None:
    broker = broker_from_url("postgresql://u:secret@127.0.0.1:1/db", connect_timeout=2)
    with pytest.raises(BrokerConnectionError) as raised:
        await broker.connect()
    refused = str(raised.value)
    # Refused at once: the message names the refusal and no deadline it never waited out.
    assert "secret" not in refused and "ConnectionRefusedError" in refused and "within" not in refused
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepted by the kernel, never answered
        port = silent.getsockname()[1]
        broker = broker_from_url(f"postgresql://u:secret@127.0.0.1:{port}/db", connect_timeout=1)
        with pytest.raises(BrokerConnectionError, match=r"within 1s") as raised:
            await broker.connect()
    assert "secret" not in str(raised.value)


async def test_schema_is_versioned_and_prefix_applies(pg: tuple[str, str], conn: asyncpg.Connection) -> None:
    url, schema = pg
    broker = broker_from_url(with_schema(url, schema) + "&table_prefix=q_")
    await broker.connect()
    try:
        assert await broker.migrate() == []  # already current: nothing to apply
        rows = await conn.fetch(f'SELECT component, version FROM "{schema}".q_schema_version ORDER BY 1')
        assert [tuple(r) for r in rows] == [("broker", 2)]
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema)
        assert [r[0] for r in tables] == [
            "q_dead_letters",
            "q_fair_clock",
            "q_fair_keys",
            "q_jobs",
            "q_schema_version",
            "q_unique_locks",
        ]
    finally:
        await broker.aclose()
    # A schema written by a newer release is refused, not silently used.
    await conn.execute(f"UPDATE \"{schema}\".q_schema_version SET version = 99 WHERE component = 'broker'")
    newer = broker_from_url(with_schema(url, schema) + "&table_prefix=q_")
    with pytest.raises(ConfigurationError, match="version 99, newer than this asyncq knows"):
        await newer.connect()


async def test_consumer_wakes_on_notify_not_poll(pg: tuple[str, str]) -> None:
    url, schema = pg
    # A poll interval far longer than the test's timeout: only NOTIFY can deliver in time.
    consumer = broker_from_url(with_schema(url, schema), poll_interval=3600)
    producer = broker_from_url(with_schema(url, schema))
    await consumer.connect()
    await producer.connect()
    try:
        async with aclosing(consumer.consume(["wake"], prefetch=1)) as it:
            pending = asyncio.ensure_future(anext(it))
            await asyncio.sleep(0.2)  # the consumer is idle, waiting; correctness does not depend on it
            for _ in range(3):
                sent = msg("wake")
                await producer.publish(sent)
                delivery = await asyncio.wait_for(pending, TIMEOUT)
                assert delivery.id == sent.id
                await delivery.ack()
                pending = asyncio.ensure_future(anext(it))
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
    finally:
        await consumer.aclose()
        await producer.aclose()


async def test_backend_cleans_up_expired_rows(pg: tuple[str, str], conn: asyncpg.Connection) -> None:
    url, schema = pg
    backend = backend_from_url(with_schema(url, schema), cleanup_interval=0.2)
    await backend.connect()
    try:
        await backend.set("gone", b"x", final=True, ttl=0.1)
        await backend.set("kept", b"y", final=True, ttl=None)
        await backend.incr("count", ttl=0.1)
        sql = (
            f'SELECT (SELECT count(*) FROM "{schema}".asyncq_results),'
            f' (SELECT count(*) FROM "{schema}".asyncq_counters)'
        )
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while tuple(await conn.fetchrow(sql)) != (1, 0):
            assert asyncio.get_running_loop().time() < deadline, "expired rows were not deleted"
            await asyncio.sleep(0.1)
        assert await backend.get("kept") == b"y"
        assert await backend.incr("count", ttl=60) == 1  # expired: counted again from zero
    finally:
        await backend.aclose()


# -- transactional enqueue ---------------------------------------------------------------------


@pytest.fixture
async def pg_app(pg: tuple[str, str]) -> AsyncIterator[App]:
    url = with_schema(*pg)
    app = App("tx", broker=url, backend=url)
    yield app
    await app.aclose()


async def test_enqueue_in_transaction_commit_runs_once(
    pg_app: App, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    runs: list[int] = []

    @pg_app.task
    async def record(n: int) -> int:
        runs.append(n)
        return n * 2

    await pg_app.connect()  # creates the tables the transaction writes to
    async with conn.transaction():
        result = await record.enqueue(21, connection=conn)
        # Not committed yet: invisible to the broker's own connections.
        assert await pg_app.broker.queue_length(pg_app.conf.task_default_queue) == 0
    assert await pg_app.broker.queue_length(pg_app.conf.task_default_queue) == 1
    async with pg_app.worker():
        assert await result.get(timeout=TIMEOUT) == 42
    assert runs == [21]


async def test_enqueue_in_transaction_rollback_never_runs(pg_app: App, conn: asyncpg.Connection) -> None:
    @pg_app.task
    async def never(n: int) -> int:
        raise AssertionError("a rolled-back job ran")

    @pg_app.task
    async def after(n: int) -> int:
        return n

    await pg_app.connect()

    async def enqueue_then_fail() -> None:
        async with conn.transaction():
            await never.apply_async((1,), connection=conn)
            raise RuntimeError("user rollback")

    with pytest.raises(RuntimeError, match="user rollback"):
        await enqueue_then_fail()
    queue = pg_app.conf.task_default_queue
    assert await pg_app.broker.queue_length(queue) == 0
    async with pg_app.worker():
        # A job sent after the rolled-back one runs; had the other been stored, it ran first.
        assert await (await after.enqueue(7)).get(timeout=TIMEOUT) == 7
    assert await pg_app.broker.queue_length(queue) == 0


async def test_canvas_in_transaction_commit_sends_every_member_and_completes(
    pg_app: App, conn: asyncpg.Connection
) -> None:
    @pg_app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @pg_app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    await pg_app.connect()
    queue = pg_app.conf.task_default_queue
    async with conn.transaction():
        chained = await chain(add.s(1, 2), add.s(10)).apply_async(connection=conn)
        grouped = await group(add.s(i, i) for i in range(3)).apply_async(connection=conn)
        joined = await chord((add.s(i, 1) for i in range(3)), total.s()).apply_async(connection=conn)
        assert await pg_app.broker.queue_length(queue) == 0  # not committed yet
    # The chain's first step, the group's three members, the chord's three header tasks.
    assert await pg_app.broker.queue_length(queue) == 7
    async with pg_app.worker():
        assert await chained.get(timeout=TIMEOUT) == 13
        assert await grouped.get(timeout=TIMEOUT) == [0, 2, 4]
        assert await joined.get(timeout=TIMEOUT) == 6
    assert await pg_app.broker.queue_length(queue) == 0


async def test_canvas_in_transaction_rollback_sends_nothing(pg_app: App, conn: asyncpg.Connection) -> None:
    ran: list[str] = []

    @pg_app.task
    async def step(x: int) -> int:
        ran.append("step")
        return x

    @pg_app.task
    async def total(values: list[int]) -> int:
        ran.append("total")
        return sum(values)

    @pg_app.task
    async def after(n: int) -> int:
        return n

    await pg_app.connect()

    async def enqueue_then_fail() -> None:
        async with conn.transaction():
            await chain(step.s(1), step.s()).apply_async(connection=conn)
            await group(step.s(i) for i in range(3)).apply_async(connection=conn)
            await chord((step.s(i) for i in range(3)), total.s()).apply_async(connection=conn)
            raise RuntimeError("user rollback")

    with pytest.raises(RuntimeError, match="user rollback"):
        await enqueue_then_fail()
    queue = pg_app.conf.task_default_queue
    assert await pg_app.broker.queue_length(queue) == 0
    async with pg_app.worker():
        # Sent after the rolled-back workflows: had any member been stored, it ran first.
        assert await (await after.enqueue(7)).get(timeout=TIMEOUT) == 7
    assert ran == []
    assert await pg_app.broker.queue_length(queue) == 0


async def test_connection_option_errors(pg_app: App) -> None:
    @pg_app.task
    async def job() -> None:
        return None

    with pytest.raises(ConfigurationError, match="takes an asyncpg connection"):
        await job.enqueue(connection=object())
    memory = App("mem", broker="memory://")

    @memory.task
    async def other() -> None:
        return None

    try:
        with pytest.raises(
            ConfigurationError, match=r"the memory:// broker cannot enqueue in a database transaction"
        ):
            await other.enqueue(connection=object())
    finally:
        await memory.aclose()


async def test_task_parameter_named_connection_stays_an_argument(pg_app: App) -> None:
    @pg_app.task
    async def uses(connection: str) -> str:
        return connection

    async with pg_app.worker():
        assert await (await uses.enqueue(connection="dsn")).get(timeout=TIMEOUT) == "dsn"


def test_migrate_command_creates_the_tables(pg: tuple[str, str], tmp_path: Path) -> None:
    url = with_schema(*pg)
    module = tmp_path / "pgapp.py"
    module.write_text(f"from asyncq import App\napp = App('m', broker={url!r}, backend={url!r})\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "asyncq", "migrate", "pgapp:app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "broker: schema" in done.stdout and "result backend: schema" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "asyncq", "migrate", "pgapp:app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "up to date" in again.stdout


async def test_a_live_server_answering_the_probe_is_not_taken_for_another_protocol() -> None:
    # What a connect that timed out reports: a PostgreSQL server that answers the probe, but
    # too late for the connect, is named as such, not as "something else".
    from asyncq._connect import describe_peer
    from asyncq._postgres import _SSL_REQUEST, _is_ssl_reply

    parts = urlsplit(require_service("postgres"))
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    answer = await describe_peer(host, port, _SSL_REQUEST, expected=("PostgreSQL", _is_ssl_reply))
    assert answer == "a PostgreSQL server answers there, but the call did not finish in time"


async def test_a_killed_connection_is_retried_and_logged_with_its_own_error(
    pg: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The server ends a statement's connection (pg_terminate_backend, as an admin or a
    # failover does): the retry's warning names that error, not one of the clean-up.
    url, schema = pg
    broker = broker_from_url(with_schema(url, schema))
    assert isinstance(broker, PostgresBroker)
    attempts = 0

    async def op(connection: Any) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return int(await connection.fetchval("SELECT 1"))

    await broker.connect()
    try:
        with caplog.at_level("WARNING", logger="asyncq._postgres"):
            assert await broker.database.run("probe", op) == 1
    finally:
        await broker.aclose()
    assert attempts == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "asyncq._postgres"]
    assert len(warnings) == 1, warnings
    assert "administrator command" in warnings[0] and "InterfaceError" not in warnings[0], warnings
