"""MySQL/MariaDB-specific behaviour of mysql:// beyond the shared backend contract.

Covers URL and option parsing, connect errors (wrong port, wrong server, wrong database),
the app's connect deadline, schema versioning, expiry and the sweeper, waits across
instances, counters, key handling, lost sessions, the per-call deadline, and an embedded
worker on the SQLite broker completing a chord with its results in MySQL.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from asyncq import App, State, chord
from asyncq.backends import backend_from_url
from asyncq.exceptions import BackendConnectionError, BackendError, ConfigurationError
from tests.conformance.drivers_mysql import drop_tables, unique_table_prefix
from tests.factories import connected
from tests.helpers import until
from tests.services import require_service

asyncmy = pytest.importorskip("asyncmy")

from asyncq._mysql import parse_mysql_url  # noqa: E402 - after the importorskip
from asyncq.backends.mysql import SCHEMA_VERSION, MySQLBackend  # noqa: E402

pytestmark = pytest.mark.mysql

TIMEOUT = 20.0


@pytest.fixture
def mysql_url() -> str:
    return require_service("mysql")


@pytest.fixture
def prefix() -> str:
    return unique_table_prefix()


@pytest.fixture
async def open_backend(mysql_url: str, prefix: str) -> AsyncIterator[Callable[..., Awaitable[MySQLBackend]]]:
    async def cleanup(_: object) -> None:
        await drop_tables(mysql_url, prefix)

    async with connected(
        lambda **options: MySQLBackend(mysql_url, table_prefix=prefix, **options), cleanup
    ) as make:
        yield make


async def admin_query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a session of its own; return its rows."""
    s = parse_mysql_url(url, {})
    conn = await asyncmy.connect(
        host=s.host, port=s.port, user=s.user, password=s.password, database=s.database, autocommit=True
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, args or None)
            return list(await cursor.fetchall() or [])
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- URLs and options --------------------------------------------------------------------------


def test_url_and_options_are_parsed() -> None:
    backend = MySQLBackend(
        "mysql://app:s%40cret@db.example:3307/results?poll_interval=0.2&table_prefix=jobs_",
        cleanup_interval=5,
        max_connections="3",
    )
    s = backend.settings
    assert (s.host, s.port, s.user, s.password, s.database) == (
        "db.example",
        3307,
        "app",
        "s@cret",
        "results",
    )
    assert (s.poll_interval, s.cleanup_interval, s.table_prefix, s.max_connections) == (0.2, 5.0, "jobs_", 3)
    assert backend_from_url("mariadb://root@localhost/test").settings.port == 3306  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("mysql://root@localhost", {}, "names no database"),
        ("mysql://root@localhost:99999/test", {}, "not a valid MySQL URL"),
        ("mysql://root@localhost/test?pool=3", {}, "unknown mysql backend option 'pool'"),
        ("mysql://root@localhost/test", {"poll_interval": 0}, "poll_interval=0: expected a number > 0"),
        ("mysql://root@localhost/test", {"table_prefix": "x`; DROP"}, "table_prefix="),
        ("mysql://root@localhost/test", {"max_connections": "many"}, "max_connections='many'"),
        ("mysql://root@localhost/test", {"connect_timeout": -1}, "connect_timeout=-1"),
    ],
)
def test_bad_urls_and_options_get_one_line_errors(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        MySQLBackend(url, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_password_is_not_shown_in_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        MySQLBackend("mysql://root:hunter2@localhost/test?nope=1")
    with pytest.raises(ConfigurationError) as info2:
        MySQLBackend("mysql://root:hunter2@localhost")
    assert "hunter2" not in str(info.value) + str(info2.value)


async def test_app_passes_its_connect_timeout() -> None:
    app = App(
        "mysql-timeout",
        broker="memory://",
        backend="mysql://root@localhost/test",
        config={"broker_connection_timeout": 0.5},
    )
    backend = app.backend
    assert isinstance(backend, MySQLBackend)
    assert backend.settings.connect_timeout == 0.5
    explicit = App(
        "mysql-timeout",
        broker="memory://",
        backend="mysql://root@localhost/test?connect_timeout=2",
        config={"broker_connection_timeout": 0.5},
    )
    assert explicit.backend.settings.connect_timeout == 2.0  # type: ignore[attr-defined]
    await app.aclose()
    await explicit.aclose()


# -- connect errors ----------------------------------------------------------------------------


async def test_a_closed_port_is_refused_in_one_line() -> None:
    port = free_port()
    backend = MySQLBackend(f"mysql://root:pw@127.0.0.1:{port}/test", connect_timeout=2)
    with pytest.raises(BackendConnectionError) as info:
        await backend.connect()
    assert "\n" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value) and "pw" not in str(info.value)
    await backend.aclose()


async def test_a_server_that_is_not_mysql_is_named() -> None:
    redis_url = require_service("redis")
    port = urlsplit(redis_url).port or 6379
    backend = MySQLBackend(f"mysql://root@127.0.0.1:{port}/test", connect_timeout=0.5)
    with pytest.raises(BackendConnectionError) as info:
        await backend.connect()
    assert "\n" not in str(info.value)
    assert "no MySQL server answered" in str(info.value)
    assert "speaks something else" in str(info.value)
    await backend.aclose()


async def test_an_unknown_database_is_named(mysql_url: str) -> None:
    s = parse_mysql_url(mysql_url, {})
    backend = MySQLBackend(f"mysql://{s.user}@{s.host}:{s.port}/asyncq_no_such_db_{uuid.uuid4().hex[:8]}")
    with pytest.raises(BackendConnectionError, match="Unknown database") as info:
        await backend.connect()
    assert "\n" not in str(info.value)
    await backend.aclose()


# -- schema ------------------------------------------------------------------------------------


async def test_tables_are_created_versioned_and_reused(open_backend, mysql_url: str, prefix: str) -> None:
    first = await open_backend()
    await first.set("a", b"1", final=True, ttl=None)
    rows = await admin_query(mysql_url, f"SELECT component, version FROM `{prefix}schema`")
    assert rows == [("results", SCHEMA_VERSION)]
    second = await open_backend()  # the tables exist: nothing is recreated, nothing is lost
    assert await second.get("a") == b"1"


async def test_a_newer_schema_is_refused(open_backend, mysql_url: str, prefix: str) -> None:
    await open_backend()
    await admin_query(mysql_url, f"UPDATE `{prefix}schema` SET version = %s", SCHEMA_VERSION + 1)
    with pytest.raises(BackendError, match="upgrade asyncq"):
        await open_backend()


# -- records, expiry, waits --------------------------------------------------------------------


async def test_expired_rows_are_invisible_and_swept(open_backend, mysql_url: str, prefix: str) -> None:
    backend: MySQLBackend = await open_backend()
    task_id, key = str(uuid.uuid4()), f"chord-{uuid.uuid4()}"
    await backend.set(task_id, b"short-lived", final=True, ttl=0.3)
    assert await backend.incr(key, 5, ttl=0.3) == 5

    async def gone() -> bool:
        return await backend.get(task_id) is None

    await until(gone, "the record to expire")
    assert await backend.wait(task_id, timeout=0.1) is None
    assert await backend.incr(key, ttl=60) == 1  # an expired counter restarts at zero
    await backend.set("kept", b"forever", final=True, ttl=None)
    assert await backend.sweep() >= 1
    rows = await admin_query(mysql_url, f"SELECT task_id FROM `{prefix}results`")
    assert rows == [(b"kept",)]


async def test_wait_wakes_on_a_write_from_another_instance(open_backend) -> None:
    reader: MySQLBackend = await open_backend(poll_interval=0.02)
    writer: MySQLBackend = await open_backend()
    task_id = str(uuid.uuid4())
    waiter = asyncio.create_task(reader.wait(task_id, timeout=TIMEOUT))
    await writer.set(task_id, b"progress", final=False, ttl=60)
    done, _ = await asyncio.wait({waiter}, timeout=0.3)
    assert not done, "a non-final record woke the waiter"
    await writer.set(task_id, b"final", final=True, ttl=60)
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"final"


async def test_aclose_wakes_waiters_with_none(open_backend) -> None:
    backend: MySQLBackend = await open_backend()
    waiter = asyncio.create_task(backend.wait(str(uuid.uuid4()), timeout=TIMEOUT))
    await asyncio.sleep(0.1)  # let it register; correctness does not depend on it
    await backend.aclose()
    assert await asyncio.wait_for(waiter, TIMEOUT) is None


async def test_keys_are_case_sensitive_and_long_ids_work(open_backend) -> None:
    backend: MySQLBackend = await open_backend()
    await backend.set("Task-A", b"upper", final=True, ttl=60)
    await backend.set("task-a", b"lower", final=True, ttl=60)
    long_id = "x" * 300 + "é"
    await backend.set(long_id, b"long", final=True, ttl=60)
    assert await backend.get_many(["Task-A", "task-a", long_id]) == [b"upper", b"lower", b"long"]
    assert await backend.wait(long_id, timeout=TIMEOUT) == b"long"
    await backend.forget(long_id)
    assert await backend.get(long_id) is None


async def test_counters_take_negative_amounts(open_backend) -> None:
    backend: MySQLBackend = await open_backend()
    key = f"c-{uuid.uuid4()}"
    assert await backend.incr(key, -2, ttl=60) == -2
    assert await backend.incr(key, 5, ttl=60) == 3
    assert await backend.incr(key, -3, ttl=None) == 0


# -- sessions and deadlines --------------------------------------------------------------------


async def test_a_killed_session_is_replaced(open_backend, mysql_url: str) -> None:
    backend: MySQLBackend = await open_backend(max_connections=1)
    await backend.set("k", b"v", final=True, ttl=60)
    (conn_id,) = (row[0] for row in await _own_sessions(backend))
    await admin_query(mysql_url, f"KILL {int(conn_id)}")
    assert await backend.get("k") == b"v"  # the idle session was dead: retried on a new one


async def _own_sessions(backend: MySQLBackend) -> list[tuple[Any, ...]]:
    async def run(cursor: Any) -> list[tuple[Any, ...]]:
        await cursor.execute("SELECT CONNECTION_ID()")
        return list(await cursor.fetchall())

    return await backend._pool.run(run, what="reading the session id")


async def test_every_call_has_a_deadline(open_backend, mysql_url: str, prefix: str) -> None:
    backend: MySQLBackend = await open_backend(command_timeout=0.5)
    key = f"locked-{uuid.uuid4()}"
    await backend.incr(key, ttl=60)
    s = parse_mysql_url(mysql_url, {})
    holder = await asyncmy.connect(
        host=s.host, port=s.port, user=s.user, password=s.password, database=s.database
    )
    try:
        async with holder.cursor() as cursor:
            await cursor.execute("BEGIN")
            await cursor.execute(f"SELECT value FROM `{prefix}counters` FOR UPDATE")
            with pytest.raises(BackendConnectionError, match=r"did not answer within 0\.5s"):
                await backend.incr(key, ttl=60)
            await cursor.execute("ROLLBACK")
    finally:
        holder.close()
    assert await backend.incr(key, ttl=60) == 2  # the interrupted increment never applied


async def test_a_deadlock_victim_is_run_again(open_backend, mysql_url: str, prefix: str) -> None:
    """InnoDB rolls a deadlock's victim back whole (1213): the pool runs the statement again."""
    backend: MySQLBackend = await open_backend()
    table = f"{prefix}deadlock"
    await admin_query(mysql_url, f"CREATE TABLE `{table}` (k INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB")
    values = ",".join(f"({k}, 0)" for k in range(1, 201))
    await admin_query(mysql_url, f"INSERT INTO `{table}` VALUES {values}")
    s = parse_mysql_url(mysql_url, {})
    holder = await asyncmy.connect(
        host=s.host, port=s.port, user=s.user, password=s.password, database=s.database
    )
    attempts: list[int] = []

    async def both_rows(cursor: Any) -> None:
        attempts.append(len(attempts) + 1)
        await cursor.execute(f"UPDATE `{table}` SET v = v + 10 WHERE k IN (1, 2) ORDER BY k")

    async def waiting() -> bool:
        rows = await admin_query(
            mysql_url, "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        )
        return bool(rows[0][0])

    try:
        async with holder.cursor() as cursor:
            await cursor.execute("BEGIN")
            # The holder changes 199 rows, so InnoDB picks the pool's one-row statement as the
            # cheaper victim once the two wait on each other.
            await cursor.execute(f"UPDATE `{table}` SET v = v + 1 WHERE k >= 2")
            call = asyncio.create_task(backend._pool.run(both_rows, what="updating both rows"))
            await until(waiting, "the pool's statement to wait for row 2")
            await cursor.execute(f"UPDATE `{table}` SET v = v + 1 WHERE k = 1")
            await cursor.execute("COMMIT")
        await asyncio.wait_for(call, TIMEOUT)
        assert attempts == [1, 2]
        rows = await admin_query(mysql_url, f"SELECT k, v FROM `{table}` WHERE k <= 3 ORDER BY k")
        assert rows == [(1, 11), (2, 11), (3, 1)]
    finally:
        holder.close()
        await admin_query(mysql_url, f"DROP TABLE IF EXISTS `{table}`")


# -- an embedded worker ------------------------------------------------------------------------


async def test_worker_on_sqlite_broker_completes_a_chord_in_mysql(
    tmp_path: Path, mysql_url: str, prefix: str
) -> None:
    app = App(
        "mysql-it",
        broker=f"sqlite:///{tmp_path / 'broker.db'}",
        backend=f"{mysql_url}?table_prefix={prefix}&poll_interval=0.02",
        config={"task_default_queue": f"mysql-{uuid.uuid4().hex[:12]}", "result_expires": 600},
    )

    @app.task
    async def square(x: int) -> int:
        return x * x

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task
    async def fail() -> None:
        raise RuntimeError("nope")

    try:
        async with app.worker(concurrency=20):
            result = await chord((square.s(i) for i in range(30)), total.s()).enqueue()
            assert await result.get(timeout=TIMEOUT) == sum(i * i for i in range(30))
            assert await result.state() == State.SUCCESS
            failed = await fail.enqueue()
            with pytest.raises(RuntimeError, match="nope"):
                await failed.get(timeout=TIMEOUT)
            assert await failed.state() == State.FAILURE
        rows = await admin_query(mysql_url, f"SELECT COUNT(*) FROM `{prefix}results`")
        assert rows[0][0] >= 32  # 30 header tasks, the callback and the failure
    finally:
        await app.aclose()
        await drop_tables(mysql_url, prefix)
