"""Unique tasks and fair queuing across three ``asyncq run`` workers, on SQLite, Redis and PostgreSQL.

Unique: three producer processes enqueue the same unique task at once and get one handle;
it runs once; enqueued again while running, still that handle; once it finished, a new
enqueue runs it again; a lock whose TTL ran out is free. Fair: tenant A floods the queue with
5,000 tasks; tenant B's 20 tasks, sent once A's are running, all start within a bound far
below A's backlog.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import ROOT, wait_for
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.services import require_service

APP = "tests.apps.unique_fair_app:app"
FLOOD = 5_000
LATE = 20
#: A tasks started between B's send and B's last start, at most (FIFO would be about FLOOD).
BOUND = 1_000


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def env(
    request: pytest.FixtureRequest, store_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, str]]:
    env = dict(store_env)
    env["FLOW_RECORD_FILE"] = str(tmp_path / "runs.tsv")
    env["FLOW_RELEASE_FILE"] = str(tmp_path / "release")
    env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"flow-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        base = require_service("redis")
        prefix = f"asyncq-test-flow-{uuid.uuid4().hex[:12]}"
        env["ASYNCQ_BROKER_URL"] = env["ASYNCQ_RESULT_BACKEND"] = (
            f"{base}{'&' if '?' in base else '?'}key_prefix={prefix}"
        )
        yield env
        _delete_redis_keys(base, prefix)
    elif request.param == "postgres":
        base = require_service("postgres")
        schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
        env["ASYNCQ_BROKER_URL"] = env["ASYNCQ_RESULT_BACKEND"] = with_schema(base, schema)
        yield env
        asyncio.run(drop_schema(base, schema))
    else:
        yield env


def _delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _records(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["FLOW_RECORD_FILE"])
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines()]


def _produce_at_once(env: dict[str, str], n: int = 1) -> list[str]:
    """Three producer processes enqueue ``hold(n)`` at the same time; their handles' ids."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.apps.unique_fair_app", str(n)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        ids.append(out.strip())
    return ids


def _app(env: dict[str, str]):
    from asyncq import App

    return App(
        "flow-app",
        broker=env["ASYNCQ_BROKER_URL"],
        backend=env["ASYNCQ_RESULT_BACKEND"],
        config={"task_default_queue": env["ASYNCQ_TASK_DEFAULT_QUEUE"]},
    )


def test_unique_task_across_producers_and_workers(
    env: dict[str, str], start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    workers = [start_worker(APP, "--concurrency", "4", env=env) for _ in range(3)]
    ids = _produce_at_once(env)
    assert len(set(ids)) == 1, ids
    (first,) = set(ids)
    wait_for(lambda: ["start", first] in [r[:2] for r in _records(env)], what="the task to start", timeout=60)
    assert set(_produce_at_once(env)) == {first}  # running: the same handle again
    Path(env["FLOW_RELEASE_FILE"]).touch()
    wait_for(lambda: ["done", first] in [r[:2] for r in _records(env)], what="the task to finish", timeout=60)
    # Finished: a new enqueue runs it again (one producer: with the release file there, the
    # new copy finishes at once, so producers a little apart would each run their own).
    assert _enqueue_once(env) != first
    wait_for(lambda: sum(r[0] == "done" for r in _records(env)) == 2, what="the second run", timeout=60)
    starts = [r[1] for r in _records(env) if r[0] == "start"]
    assert len(starts) == 2 and starts[0] == first, starts
    assert all(w.poll() is None for w in workers)


def _enqueue_once(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.apps.unique_fair_app", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_unique_lock_ttl_expiry(env: dict[str, str]) -> None:
    """No worker consumes the queue: only the TTL can free the lock."""
    app = _app(env)

    @app.task(name="flow.parked", unique=True, unique_ttl=1.0)
    async def parked() -> None: ...

    async def scenario() -> tuple[str, str, str]:
        try:
            first = (await parked.enqueue()).id
            again = (await parked.enqueue()).id
            deadline = time.monotonic() + 30
            while True:  # the lock lasts unique_ttl=1 s; then a new copy is queued
                later = (await parked.enqueue()).id
                if later != first or time.monotonic() > deadline:
                    return first, again, later
                await asyncio.sleep(0.1)
        finally:
            await app.aclose()

    first, again, later = asyncio.run(scenario())
    assert again == first
    assert later != first


def test_fair_queuing_bounds_a_late_tenants_wait(
    env: dict[str, str], start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    from tests.apps.unique_fair_app import tenant_job

    app = _app(env)

    async def send(tenant: str, count: int) -> None:
        queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"]  # the workers' (tenant_job's own app has the default)
        await app.send_many([tenant_job.build_message((tenant, i), queue=queue) for i in range(count)])

    async def flood() -> None:
        try:
            for _ in range(0, FLOOD, 1000):
                await send("A", 1000)
        finally:
            await app.aclose()

    asyncio.run(flood())
    for _ in range(3):
        start_worker(APP, "--concurrency", "4", env=env)
    wait_for(lambda: len(_records(env)) >= 100, what="tenant A's tasks to run", timeout=60)

    async def late() -> None:
        try:
            await send("B", LATE)
        finally:
            await app.aclose()

    before = len(_records(env))
    asyncio.run(late())
    wait_for(lambda: sum(r[0] == "B" for r in _records(env)) == LATE, what="tenant B's tasks", timeout=60)
    records = _records(env)
    last_b = max(i for i, r in enumerate(records) if r[0] == "B")
    a_between = sum(r[0] == "A" for r in records[before:last_b])
    assert a_between < BOUND, f"{a_between} of A's tasks started before B's last"
    assert sum(r[0] == "A" for r in records) < FLOOD  # B did not wait for the flood's tail
