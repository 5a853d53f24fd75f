"""The transactional outbox: ``enqueue(..., connection=conn)`` on Redis and RabbitMQ brokers.

Messages are written to an outbox table in the caller's PostgreSQL transaction and relayed
to the real broker once committed: rollback never sends, commit sends (the task runs once),
a relay SIGKILLed mid-batch loses nothing, and an idle relay wakes by NOTIFY.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from asyncq import App
from asyncq.canvas import chain, chord
from asyncq.exceptions import ConfigurationError
from asyncq.outbox import Outbox, Relay
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.conformance.drivers_redis import delete_prefix, unique_prefix
from tests.services import require_service

pytestmark = pytest.mark.postgres

TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[2]


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The server URL with a fresh schema, dropped afterwards."""
    url = require_service("postgres")
    schema = f"asyncq_outbox_{uuid.uuid4().hex[:12]}"
    yield with_schema(url, schema)
    await drop_schema(url, schema)


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_url.split("?")[0], timeout=10)
    yield connection
    await connection.close(timeout=10)


@pytest.fixture
async def redis_broker() -> AsyncIterator[str]:
    prefix = unique_prefix()
    yield f"{require_service('redis')}?key_prefix={prefix}"
    await delete_prefix(require_service("redis"), prefix)


@pytest.fixture(params=["redis", "rabbitmq"])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "rabbitmq":
        yield str(request.getfixturevalue("rabbitmq_url"))
        return
    prefix = unique_prefix()
    yield f"{require_service('redis')}?key_prefix={prefix}"
    await delete_prefix(require_service("redis"), prefix)


def make_app(broker: str, pg_url: str, **outbox_options: object) -> App:
    query = "".join(f"&{key}={value}" for key, value in outbox_options.items())
    config = {"task_default_queue": f"outbox-{uuid.uuid4().hex[:10]}", "outbox_url": pg_url + query}
    return App("outbox", broker=broker, backend=pg_url, config=config)


@pytest.fixture
async def app(broker_url: str, pg_url: str) -> AsyncIterator[App]:
    application = make_app(broker_url, pg_url)
    yield application
    await application.aclose()


async def pending(app: App) -> int:
    assert app.outbox is not None
    return await app.outbox.pending()


async def test_rollback_is_never_sent(app: App, conn: asyncpg.Connection) -> None:
    @app.task
    async def never(n: int) -> int:
        raise AssertionError("a rolled-back message was relayed")

    @app.task
    async def after(n: int) -> int:
        return n

    await app.connect()  # creates the outbox table the transaction writes to

    async def enqueue_then_fail() -> None:
        async with conn.transaction():
            await never.apply_async((1,), connection=conn)
            raise RuntimeError("user rollback")

    with pytest.raises(RuntimeError, match="user rollback"):
        await enqueue_then_fail()
    assert await pending(app) == 0
    async with app.worker():
        # Sent after the rolled-back one through the same outbox: had that been kept, it ran first.
        async with conn.transaction():
            later = await after.enqueue(7, connection=conn)
        assert await later.get(timeout=TIMEOUT) == 7
    assert await app.broker.queue_length(app.conf.task_default_queue) == 0
    assert await pending(app) == 0


async def test_commit_is_sent_once(app: App, conn: asyncpg.Connection) -> None:
    runs: list[int] = []

    @app.task
    async def record(n: int) -> int:
        runs.append(n)
        return n * 2

    @app.task
    async def marker() -> str:
        return "done"

    await app.connect()
    async with app.worker():
        async with conn.transaction():
            result = await record.enqueue(21, connection=conn)
            await conn.execute("CREATE TEMP TABLE user_rows (n int)")  # the user's own work
            assert await pending(app) == 0  # not committed: invisible to the relay
        assert await result.get(timeout=TIMEOUT) == 42
        # A message sent after it has run: no second copy of the first was waiting.
        assert await (await marker.enqueue()).get(timeout=TIMEOUT) == "done"
    assert runs == [21]
    assert await pending(app) == 0
    assert await app.broker.queue_length(app.conf.task_default_queue) == 0


async def test_send_many_in_one_transaction(app: App, conn: asyncpg.Connection) -> None:
    @app.task
    async def double(n: int) -> int:
        return n * 2

    await app.connect()
    messages = [double.build_message((n,)) for n in range(5)]
    async with conn.transaction():
        results = await app.send_many(messages, connection=conn)
    assert await pending(app) == 5
    async with app.worker():
        assert [await r.get(timeout=TIMEOUT) for r in results] == [0, 2, 4, 6, 8]
    assert await pending(app) == 0


async def test_workflow_in_a_transaction_rollback_then_commit(app: App, conn: asyncpg.Connection) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    await app.connect()
    workflow = chord((add.s(i, 1) for i in range(3)), total.s())

    async def send_then_fail() -> None:
        async with conn.transaction():
            await workflow.apply_async(connection=conn)
            raise RuntimeError("user rollback")

    with pytest.raises(RuntimeError, match="user rollback"):
        await send_then_fail()
    assert await pending(app) == 0
    async with conn.transaction():
        joined = await workflow.apply_async(connection=conn)
        chained = await chain(add.s(1, 2), add.s(10)).apply_async(connection=conn)
    async with app.worker():
        assert await joined.get(timeout=TIMEOUT) == 6
        assert await chained.get(timeout=TIMEOUT) == 13
    assert await pending(app) == 0


async def test_relay_wakes_by_notify(redis_broker: str, pg_url: str, conn: asyncpg.Connection) -> None:
    # The fallback poll is a minute: a message relayed within seconds came by NOTIFY.
    app = make_app(redis_broker, pg_url, poll_interval=60)
    try:

        @app.task
        async def job() -> None:
            return None

        await app.connect()
        assert app.outbox is not None
        relay = Relay(app.outbox, app.broker)
        relaying = asyncio.create_task(relay.serve())
        try:
            await asyncio.wait_for(relay.idle.wait(), TIMEOUT)  # its first pass is over
            async with conn.transaction():
                await job.enqueue(connection=conn)
            queue = app.conf.task_default_queue

            async def relayed() -> bool:
                return relay.relayed == 1  # published and deleted

            await until(relayed, "the relay to publish the committed message", timeout=10.0)
            assert await app.broker.queue_length(queue) == 1
            assert await pending(app) == 0
        finally:
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)
    finally:
        await app.aclose()


async def test_sigkilled_relay_loses_nothing(
    redis_broker: str, pg_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    batch = 10
    app = make_app(redis_broker, pg_url, batch_size=batch)
    seen: list[int] = []
    try:

        @app.task
        async def record(n: int) -> None:
            seen.append(n)

        await app.connect()
        total = 1000
        async with conn.transaction():
            await app.send_many([record.build_message((n,)) for n in range(total)], connection=conn)
        queue = app.conf.task_default_queue
        module = tmp_path / "relayapp.py"
        module.write_text(
            "from asyncq import App\n"
            f"app = App('outbox', broker={app.broker_url!r}, backend={pg_url!r},"
            f" config={{'outbox_url': {app.conf.outbox_url!r}}})\n"
        )
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}
        relay = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "relay", "relayapp:app", "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            async def some_relayed() -> bool:
                assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
                return await app.broker.queue_length(queue) >= 5 * batch

            await until(some_relayed, "the relay subprocess to publish a few batches", timeout=60.0)
        finally:
            relay.send_signal(signal.SIGKILL)
            relay.wait(timeout=30)
            if relay.stderr is not None:
                relay.stderr.close()
        left = await pending(app)
        assert 0 < left < total, "the relay was not killed mid-run"
        async with app.worker():  # its relay takes over the rows the dead one left

            async def all_ran() -> bool:
                return set(seen) == set(range(total))

            await until(all_ran, "every committed message to run", timeout=60.0)
        assert await pending(app) == 0
        # At-least-once: only the batch in flight at the kill can have been published twice.
        assert len(seen) - total <= batch
    finally:
        await app.aclose()


async def test_connection_errors_without_an_outbox(redis_broker: str, pg_url: str) -> None:
    app = App("outbox", broker=redis_broker, backend=pg_url)
    try:

        @app.task
        async def job() -> None:
            return None

        with pytest.raises(ConfigurationError, match="set outbox_url to a postgresql:// URL"):
            await job.apply_async(connection=object())
    finally:
        await app.aclose()
    outbox = Outbox(pg_url)
    with pytest.raises(ConfigurationError, match="connection= takes an asyncpg connection"):
        await outbox.publish_in_transaction("not a connection", [])
    with pytest.raises(ConfigurationError, match="batch_size='many': expected an integer >= 1"):
        Outbox(pg_url + "&batch_size=many")


def test_migrate_and_relay_commands(redis_broker: str, pg_url: str, tmp_path: Path) -> None:
    module = tmp_path / "cmdapp.py"
    module.write_text(
        "from asyncq import App\n"
        f"app = App('outbox', broker={redis_broker!r}, config={{'outbox_url': {pg_url!r}}})\n"
        f"bare = App('outbox', broker={redis_broker!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}

    def asyncq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asyncq", *args], env=env, capture_output=True, text=True, timeout=60
        )

    done = asyncq("migrate", "cmdapp:app")
    assert done.returncode == 0, done.stderr
    assert "outbox: schema migrated to version 1" in done.stdout
    assert "outbox: schema up to date" in asyncq("migrate", "cmdapp:app").stdout
    refused = asyncq("relay", "cmdapp:bare")
    assert refused.returncode != 0 and "the outbox_url setting is not set" in refused.stderr
    # SIGTERM: the relay finishes its batch and leaves with status 0.
    relay = subprocess.Popen(
        [sys.executable, "-m", "asyncq", "relay", "cmdapp:app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stderr is not None
        for line in relay.stderr:
            if "outbox relay of" in line and "ready" in line:
                break
        else:
            pytest.fail("asyncq relay ended before it was ready")
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(timeout=30)
        if relay.stderr is not None:
            relay.stderr.close()
