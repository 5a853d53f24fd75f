"""The broker goes away mid-run: workers and producers reconnect and no task is lost.

* Redis: a private ``redis-server`` with an append-only file is stopped and restarted on the
  same port while a worker process drains a batch.
* RabbitMQ: the server closes every client connection of the test's vhost mid-run.
* PostgreSQL: a private cluster (``initdb``/``pg_ctl``) is restarted on the same port while a
  worker process drains a batch and a producer keeps sending.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq import App
from tests.acceptance.conftest import wait_for
from tests.apps import cli_app
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.servers import PostgresCluster, RedisServer
from tests.services import require_service

APP = "tests.apps.cli_app:app"
TOTAL = 200


def done_counts(directory: Path) -> Counter[int]:
    return Counter(int(p.name.split("-")[1]) for p in directory.iterdir() if p.name.startswith("done-"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_service("redis")  # the shared server's presence says redis-server is installed here
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; the Redis restart test needs it")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def run_batch(app: App, marks: Path, queue: str) -> None:
    async def send() -> None:
        await app.send_many([cli_app.mark.build_message((i, str(marks)), queue=queue) for i in range(TOTAL)])
        await app.aclose()

    asyncio.run(send())


@pytest.mark.redis
def test_redis_restart_mid_run_loses_nothing(
    redis_server: RedisServer,
    store_env: dict[str, str],
    start_worker: Callable[..., Popen[str]],
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**store_env, "ASYNCQ_BROKER_URL": redis_server.url + "?visibility_timeout=3"}
    env["ASYNCQ_RESULT_BACKEND"] = redis_server.url
    queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"restart-{uuid.uuid4().hex[:8]}"
    run_batch(App("cli-app", broker=env["ASYNCQ_BROKER_URL"]), marks, queue)
    worker = start_worker(APP, "--concurrency", "20", env=env)
    wait_for(lambda: sum(done_counts(marks).values()) >= TOTAL // 4, what="a quarter of the batch")
    redis_server.stop()
    time.sleep(1.0)  # an outage, not a blip: the worker must notice and reconnect
    redis_server.start()
    wait_for(lambda: len(done_counts(marks)) == TOTAL, timeout=90, what="every task after the restart")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert sorted(done_counts(marks)) == list(range(TOTAL))


@pytest.mark.rabbitmq
def test_rabbitmq_connections_closed_mid_run_loses_nothing(
    rabbitmq_url: str,  # noqa: F811 - the imported session fixture
    store_env: dict[str, str],
    start_worker: Callable[..., Popen[str]],
    tmp_path: Path,
) -> None:
    require_service("rabbitmq")
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**store_env, "ASYNCQ_BROKER_URL": rabbitmq_url}
    env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"close-{uuid.uuid4().hex[:8]}"
    app = App("cli-app", broker=rabbitmq_url, backend=env["ASYNCQ_RESULT_BACKEND"])
    run_batch(app, marks, queue)
    worker = start_worker(APP, "--concurrency", "20", env=env)
    wait_for(lambda: sum(done_counts(marks).values()) >= TOTAL // 4, what="a quarter of the batch")
    vhost = rabbitmq_url.rsplit("/", 1)[1] or "/"
    closed = subprocess.run(
        ["rabbitmqctl", "close_all_connections", "-p", vhost, "asyncq connection-loss test"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert closed.returncode == 0, closed.stderr
    wait_for(
        lambda: len(done_counts(marks)) == TOTAL, timeout=90, what="every task after the connections closed"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert sorted(done_counts(marks)) == list(range(TOTAL))

    async def cleanup() -> int:
        try:
            await app.connect()
            left = await app.broker.queue_length(queue)
            await app.broker.delete_queue(queue)  # type: ignore[attr-defined]
            return left
        finally:
            await app.aclose()

    left = asyncio.run(cleanup())
    # RabbitMQ requeued what was in flight when it closed the connections, and refused the
    # acks of those first runs: the copies run again (or, prefetched when the worker stopped,
    # are still queued). Every one is a copy of a task that is already done.
    duplicates = sum(done_counts(marks).values()) - TOTAL
    print(f"{duplicates} duplicate runs; {left} copies still queued at the end")


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
    except Exception:
        cluster.remove()
        raise
    yield cluster
    cluster.remove()


@pytest.mark.postgres
def test_postgres_restart_mid_run_loses_nothing(
    postgres_cluster: PostgresCluster,
    store_env: dict[str, str],
    start_worker: Callable[..., Popen[str]],
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    url = postgres_cluster.url
    env = {**store_env, "ASYNCQ_BROKER_URL": url + "?visibility_timeout=3", "ASYNCQ_RESULT_BACKEND": url}
    queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"restart-{uuid.uuid4().hex[:8]}"
    # retry_timeout covers the outage: a producer's publish waits for the server to return.
    producer = App("cli-app", broker=url + "?retry_timeout=60", backend=url)
    later = 100  # sent one by one by a producer connected before, during and after the outage

    async def scenario() -> None:
        try:
            await producer.send_many(
                [cli_app.mark.build_message((i, str(marks)), queue=queue) for i in range(TOTAL)]
            )
            worker = start_worker(APP, "--concurrency", "20", env=env)
            await asyncio.to_thread(
                wait_for,
                lambda: sum(done_counts(marks).values()) >= TOTAL // 4,
                what="a quarter of the batch",
            )

            async def trickle() -> None:
                for i in range(TOTAL, TOTAL + later):
                    await producer.send_message(cli_app.mark.build_message((i, str(marks)), queue=queue))
                    await asyncio.sleep(0.02)

            sending = asyncio.create_task(trickle())
            await asyncio.to_thread(postgres_cluster.restart, 1.0)
            await asyncio.wait_for(sending, 90)
            await asyncio.to_thread(
                wait_for,
                lambda: len(done_counts(marks)) == TOTAL + later,
                timeout=90,
                what="every task after the restart",
            )
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 30) == 0
        finally:
            await producer.aclose()

    asyncio.run(scenario())
    assert sorted(done_counts(marks)) == list(range(TOTAL + later))
    print(f"\n{sum(done_counts(marks).values()) - TOTAL - later} duplicate runs")
