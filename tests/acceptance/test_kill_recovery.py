"""A worker SIGKILLed in the middle of a batch: a second worker completes every task.

Runs over every durable broker that is available: the embedded SQLite store, Redis,
RabbitMQ, PostgreSQL, SQS (a moto server the tests start) and Kafka (a Tansu broker the tests
start).
Nothing may be lost; a task the dead worker finished but had not yet acknowledged may run
twice (at-least-once), and the duplicates are counted and reported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq import App
from tests.acceptance.conftest import wait_for
from tests.apps import cli_app
from tests.conformance.drivers_postgres import postgres_url  # noqa: F401 - fixture
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.helpers import until_drained
from tests.servers import moto_sqs, tansu_kafka
from tests.services import require_service

APP = "tests.apps.cli_app:app"
TOTAL = 200
#: The lease brokers' visibility timeout (also store_env's for SQLite): a killed worker's
#: messages are free again this long after the kill.
LEASE = 2


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("sqs", marks=pytest.mark.sqs),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def broker_env(request: pytest.FixtureRequest, store_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The workers' environment for one broker, with a queue name private to this test."""
    env = dict(store_env)
    env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"kill-{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        env["ASYNCQ_BROKER_URL"] = require_service("redis") + f"?visibility_timeout={LEASE}"
        env["ASYNCQ_RESULT_BACKEND"] = require_service("redis")
    elif request.param == "rabbitmq":
        env["ASYNCQ_BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
        env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        env["ASYNCQ_BROKER_URL"] = url + f"&visibility_timeout={LEASE}"
        env["ASYNCQ_RESULT_BACKEND"] = url
    elif request.param == "sqs":
        env["ASYNCQ_BROKER_URL"] = moto_sqs().url + f"&visibility_timeout={LEASE}&wait_time=1"
        env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    elif request.param == "kafka":
        group = uuid.uuid4().hex[:10]
        env["ASYNCQ_BROKER_URL"] = f"{tansu_kafka().url}?group_id=g{group}&session_timeout=2&partitions=4"
        env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    return env


def done_counts(directory: Path) -> Counter[int]:
    return Counter(int(p.name.split("-")[1]) for p in directory.iterdir() if p.name.startswith("done-"))


def test_sigkill_mid_batch_loses_nothing(
    broker_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = broker_env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    app = App("cli-app", broker=broker_env["ASYNCQ_BROKER_URL"], backend=broker_env["ASYNCQ_RESULT_BACKEND"])

    async def send() -> None:
        messages = [cli_app.mark.build_message((i, str(marks)), queue=queue) for i in range(TOTAL)]
        await app.send_many(messages)
        await app.aclose()

    asyncio.run(send())
    first = start_worker(APP, "--concurrency", "20", env=broker_env)
    wait_for(lambda: sum(done_counts(marks).values()) >= TOTAL // 4, what="a quarter of the batch to finish")
    os.kill(first.pid, signal.SIGKILL)
    leases_lapsed = time.monotonic() + LEASE
    first.wait(timeout=10)
    at_kill = sum(done_counts(marks).values())
    assert at_kill < TOTAL, "the first worker finished everything before it was killed"

    second = start_worker(APP, "--concurrency", "20", env=broker_env)
    wait_for(lambda: len(done_counts(marks)) == TOTAL, timeout=90, what="every task to complete")

    async def drained() -> None:
        try:
            await app.connect()
            await until_drained(app.broker, queue, timeout=60, not_before=leases_lapsed)
        finally:
            await app.aclose()

    # Every task ran once; copies handed out again (at-least-once) may still run or wait, and
    # the killed worker's leases hold the tasks it finished but had not acknowledged until
    # they lapse: the survivor stops only once the broker holds nothing more.
    asyncio.run(drained())
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0

    counts = done_counts(marks)
    assert sorted(counts) == list(range(TOTAL)), "a task was lost"
    duplicates = sum(counts.values()) - TOTAL
    scheme = broker_env["ASYNCQ_BROKER_URL"].split(":")[0]
    # At-least-once: only tasks in flight at the kill may run twice (at most the concurrency).
    # Kafka commits a partition only up to its lowest unfinished record: finished ones above
    # it, and those of the last commit interval, run again too (bounded by the records taken).
    allowed = 20 if scheme != "kafka" else at_kill
    assert duplicates <= allowed, f"{duplicates} duplicates"
    print(f"\n{scheme}: killed after {at_kill}/{TOTAL} done, {duplicates} duplicates")

    async def left() -> int:
        try:
            await app.connect()
            return await app.broker.queue_length(queue)
        finally:
            if hasattr(app.broker, "delete_queue"):
                await app.broker.delete_queue(queue)  # RabbitMQ: leave the vhost clean
            await app.aclose()

    assert asyncio.run(left()) == 0
