"""Unique tasks end to end on memory, SQLite, Redis and PostgreSQL: one copy queued or running per key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncq import App
from asyncq.exceptions import ConfigurationError
from asyncq.unique.store import LOCK_STORES, lock_store_for
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

TIMEOUT = 15.0


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    prefix = unique_prefix()
    schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        base = require_service("redis")
        url = f"{base}{'&' if '?' in base else '?'}key_prefix={prefix}"
    elif request.param == "postgres":
        url = with_schema(require_service("postgres"), schema)
    else:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
    app = App("unique", broker=url, config={"task_default_retry_delay": 0.05})
    yield app
    await app.aclose()
    if request.param == "redis":
        await delete_prefix(base, prefix)
    elif request.param == "postgres":
        await drop_schema(require_service("postgres"), schema)


async def test_second_enqueue_returns_the_queued_copy(app: App) -> None:
    runs: list[int] = []
    gate = asyncio.Event()

    @app.task(unique=True)
    async def report(n: int) -> int:
        runs.append(n)
        await gate.wait()
        return n

    first = await report.enqueue(1)
    again = await asyncio.gather(*(report.enqueue(1) for _ in range(5)))
    other = await report.enqueue(2)  # other arguments: another key
    assert {r.id for r in again} == {first.id}
    assert other.id != first.id
    async with app.worker(concurrency=4):
        await until(lambda: sorted(runs) == [1, 2], "both keys to start")
        assert (await report.enqueue(1)).id == first.id  # running: still the same handle
        gate.set()
        assert await first.get(timeout=TIMEOUT) == 1
        fresh = await report.enqueue(1)  # finished: a new copy runs
        assert fresh.id != first.id
        assert await fresh.get(timeout=TIMEOUT) == 1
    assert runs.count(1) == 2


async def test_unique_key_argument_and_ttl_expiry(app: App) -> None:
    @app.task(unique_key="user", unique_ttl=0.3)
    async def sync_user(user: str, force: bool = False) -> str:
        return user

    first = await sync_user.enqueue("ann")
    assert (await sync_user.enqueue("ann", force=True)).id == first.id  # the key is the user only
    store = lock_store_for(app.broker)
    key = sync_user.unique.key(sync_user.name, ("ann",), {})  # type: ignore[union-attr]
    await until(lambda: _free(store, key), "the lock's TTL to run out")
    second = await sync_user.enqueue("ann")
    assert second.id != first.id


async def _free(store: object, key: str) -> bool:
    return await store.holder(key) is None  # type: ignore[attr-defined]


async def test_retry_keeps_the_lock_and_failure_frees_it(app: App) -> None:
    attempts: list[int] = []

    @app.task(unique=True, bind=True, max_retries=2)
    async def flaky(self: object) -> None:
        attempts.append(1)
        raise self.retry(countdown=0.05)  # type: ignore[attr-defined]

    handle = await flaky.enqueue()
    async with app.worker():
        await until(lambda: len(attempts) >= 2, "a retry")
        if len(attempts) < 3:
            assert (await flaky.enqueue()).id == handle.id  # between attempts: the lock is kept
        with pytest.raises(Exception):  # noqa: B017 - whichever error the last attempt raised
            await handle.get(timeout=TIMEOUT)
        again = await flaky.enqueue()
        assert again.id != handle.id
        with pytest.raises(Exception):  # noqa: B017
            await again.get(timeout=TIMEOUT)


async def test_revoked_copy_frees_the_lock(app: App) -> None:
    @app.task(unique=True)
    async def job() -> None:
        return None

    handle = await job.enqueue()
    await handle.revoke()
    async with app.worker():
        with pytest.raises(Exception):  # noqa: B017 - TaskRevokedError
            await handle.get(timeout=TIMEOUT)
        again = await job.enqueue()
        assert again.id != handle.id
        await again.get(timeout=TIMEOUT)


async def test_bad_declarations_are_configuration_errors() -> None:
    app = App("bad", broker="memory://")
    with pytest.raises(ConfigurationError, match="unique_key='nope' names no argument"):

        @app.task(unique_key="nope")
        async def a(x: int) -> None: ...

    with pytest.raises(ConfigurationError, match="unique_ttl"):

        @app.task(unique=True, unique_ttl=0)
        async def b() -> None: ...


def test_a_broker_without_locks_is_a_configuration_error() -> None:
    class Other:
        url = "amqp://guest@localhost//"

    with pytest.raises(
        ConfigurationError, match=r"\(memory, postgres, redis, sqlite\); the amqp:// broker has none"
    ):
        lock_store_for(Other())


def test_every_lock_store_is_tested() -> None:
    modules = {path.partition(":")[0].rpartition(".")[2] for path in LOCK_STORES.values()}
    assert modules == {"memory", "sqlite", "redis", "postgres"}  # the params of the app fixture


async def test_unique_and_fair_tasks_and_the_waiting_tenants_show_in_stats(app: App) -> None:
    app.conf.worker_heartbeat_interval = 0.2  # the fair keys are counted at each heartbeat
    gate = asyncio.Event()

    @app.task(unique=True, unique_ttl=60)
    async def once() -> None: ...

    @app.task(fair_key="tenant", fair_weights={"a": 3})
    async def work(tenant: str, n: int) -> None:
        await gate.wait()

    handles = [await work.enqueue(tenant, n) for n in range(3) for tenant in "abc"]
    fair = app.broker.capabilities.fair_queuing
    queue = app.conf.task_default_queue
    async with app.worker(concurrency=1, prefetch=1, hostname="w1"):
        inspect = app.control.inspect(destination=["w1"], timeout=2.0)

        async def three_tenants_waiting() -> bool:
            stats = (await inspect.stats()).get("w1")
            return stats is not None and stats.limits["fair"]["active_keys"] == ({queue: 3} if fair else {})

        await until(three_tenants_waiting, "the worker to count the tenants waiting their turn")
        limits = (await inspect.stats())["w1"].limits
        assert limits["unique"] == {once.name: {"ttl": 60}}
        assert limits["fair"]["tasks"] == {work.name: {"weights": {"a": 3}}}
        gate.set()
        for handle in handles:
            await handle.get(timeout=TIMEOUT)
