"""Poison messages under real worker processes: healthy tasks are untouched by them.

Two ``asyncq run`` workers (concurrency 50) run a batch in which some tasks call
``os._exit(1)``. A dead worker is restarted, as a supervisor would. Every healthy task must
complete (SUCCESS, never overwritten), every poison message must be dead-lettered exactly
once, nothing may be left or lost; duplicates (at-least-once) are counted and printed.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncq import App, State
from asyncq.result import decode_record
from tests.apps import poison_tasks
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.services import require_service

APP = "tests.apps.poison_tasks:app"
WORKERS = 2
DEADLINE = 300.0


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_env(request: pytest.FixtureRequest, store_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The workers' environment for one broker, with a queue private to this test."""
    env = dict(store_env)
    env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"poison-{uuid.uuid4().hex[:10]}"
    env["ASYNCQ_WORKER_MAX_DELIVERIES"] = "3"
    env["ASYNCQ_LOG_LEVEL"] = "warning"
    if request.param == "redis":
        env["ASYNCQ_BROKER_URL"] = require_service("redis") + "?visibility_timeout=2"
        env["ASYNCQ_RESULT_BACKEND"] = require_service("redis")
    elif request.param == "rabbitmq":
        env["ASYNCQ_BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
        env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    return env


def done_counts(directory: Path) -> Counter[int]:
    return Counter(int(p.name.split("-")[1]) for p in directory.iterdir() if p.name.startswith("done-"))


@pytest.mark.timeout(DEADLINE + 120)  # dozens of worker and sandbox restarts on a loaded machine
@pytest.mark.parametrize(("total", "poison_count"), [(50, 1), (300, 30)], ids=["1-in-50", "10pct-of-300"])
def test_poison_messages_spare_healthy_tasks(
    broker_env: dict[str, str],
    start_worker: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    total: int,
    poison_count: int,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = broker_env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    poisons = set(random.Random(total).sample(range(total), poison_count))
    healthy = total - poison_count
    app = App(
        "poison-tasks", broker=broker_env["ASYNCQ_BROKER_URL"], backend=broker_env["ASYNCQ_RESULT_BACKEND"]
    )
    messages = [
        poison_tasks.work.build_message((i, str(marks)), {"poison": i in poisons}, queue=queue)
        for i in range(total)
    ]
    ids = [m.id for m in messages]
    poison_ids = {ids[i] for i in poisons}

    async def send() -> None:
        await app.send_many(messages)
        await app.aclose()

    async def dead_letter_ids() -> list[str]:
        try:
            await app.connect()
            return [d.id for d in await app.broker.dead_letters(queue, limit=10 * total)]
        finally:
            await app.aclose()

    asyncio.run(send())
    args = (APP, "--concurrency", "50")
    workers = [start_worker(*args, env=broker_env) for _ in range(WORKERS)]
    deaths = 0
    deadline = time.monotonic() + DEADLINE
    while True:
        for slot, proc in enumerate(workers):
            if proc.poll() is not None:  # killed by a poison message: a supervisor restarts it
                deaths += 1
                workers[slot] = start_worker(*args, env=broker_env)
        if len(done_counts(marks)) == healthy and len(asyncio.run(dead_letter_ids())) >= poison_count:
            break
        assert time.monotonic() < deadline, (
            f"not finished after {DEADLINE}s: {len(done_counts(marks))}/{healthy} healthy done, "
            f"{len(asyncio.run(dead_letter_ids()))}/{poison_count} poison dead-lettered, {deaths} deaths"
        )
        time.sleep(0.5)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(timeout=60) == 0

    async def outcome() -> tuple[list[bytes | None], list[str], int]:
        try:
            await app.connect()
            records = await app.backend.get_many(ids)
            dead = [d.id for d in await app.broker.dead_letters(queue, limit=10 * total)]
            return records, dead, await app.broker.queue_length(queue)
        finally:
            if hasattr(app.broker, "delete_queue"):
                await app.broker.delete_queue(queue)
            await app.aclose()

    records, dead, left = asyncio.run(outcome())
    counts = done_counts(marks)
    duplicates = sum(counts.values()) - healthy
    states = Counter()
    for task_id, data in zip(ids, records, strict=True):
        assert data is not None, f"no record for {task_id}"
        record = decode_record(data, app.serializers)
        states[record.status] += 1
        if task_id in poison_ids:
            assert record.status == State.FAILURE and record.exc_type is not None
            assert record.exc_type.endswith("WorkerLostError"), record
        else:
            assert record.status == State.SUCCESS, f"healthy task {task_id}: {record}"
    scheme = broker_env["ASYNCQ_BROKER_URL"].split(":")[0]
    print(
        f"\n{scheme}: {total} tasks, {poison_count} poison, {WORKERS} workers x 50: "
        f"{deaths} worker deaths, {duplicates} duplicate runs, "
        f"{len([d for d in dead if d not in poison_ids])} healthy dead-lettered, states {dict(states)}"
    )
    assert sorted(counts) == sorted(set(range(total)) - poisons), "a healthy task was lost"
    assert sorted(dead) == sorted(poison_ids), "each poison message is dead-lettered exactly once"
    assert deaths <= poison_count, "a poison message killed more than one worker"
    assert left == 0
