"""A 1,000-task chord run by 4 worker processes racing to join it: the callback runs once."""

from __future__ import annotations

import asyncio
import importlib
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq import App, chord
from tests.acceptance.conftest import wait_for
from tests.apps import canvas_app
from tests.services import require_service

APP = "tests.apps.canvas_app:app"
HEADER = 1000
WORKERS = 4


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def race_env(request: pytest.FixtureRequest, store_env: dict[str, str]) -> dict[str, str]:
    env = dict(store_env)
    if request.param == "redis":
        url = require_service("redis")
        importlib.import_module("asyncq.brokers.redis")  # a broken driver must fail, not skip
        importlib.import_module("asyncq.backends.redis")
        env["ASYNCQ_BROKER_URL"] = env["ASYNCQ_RESULT_BACKEND"] = url
    env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"chord-race-{uuid.uuid4().hex[:12]}"
    return env


@pytest.mark.slow
def test_chord_joins_exactly_once_with_racing_workers(
    race_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    runs = tmp_path / "callback-runs.txt"
    queue = race_env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    producer = App(
        "canvas-app",
        broker=race_env["ASYNCQ_BROKER_URL"],
        backend=race_env["ASYNCQ_RESULT_BACKEND"],
        config={"task_default_queue": queue},
    )
    producer.tasks = canvas_app.app.tasks
    workflow = chord((canvas_app.square.s(i) for i in range(HEADER)), canvas_app.record.s(str(runs)))
    workflow.set(queue=queue)  # the tasks belong to canvas_app.app, which routes to its own default

    async def send() -> str:
        try:
            result = await workflow.apply_async(app=producer)
            return result.id
        finally:
            await producer.aclose()

    workers = [start_worker(APP, "--concurrency", "50", env=race_env) for _ in range(WORKERS)]
    wait_for(lambda: all("consuming" in log_of(w) for w in workers), what="every worker to start consuming")
    callback_id = asyncio.run(send())

    async def outcome() -> int:
        try:
            return int(await producer.AsyncResult(callback_id).get(timeout=60))
        finally:
            await producer.aclose()

    total = asyncio.run(outcome())
    assert total == sum(i * i for i in range(HEADER))
    for worker in workers:  # graceful stop: any follow-up still in flight gets to publish
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, log_of(worker)

    async def left_in_queue() -> int:
        try:
            await producer.connect()
            return await producer.broker.queue_length(queue)
        finally:
            await producer.aclose()

    lines = runs.read_text().splitlines()
    assert len(lines) == 1, lines  # the callback ran exactly once...
    assert lines[0].split()[1:] == [str(HEADER), str(total)]  # ...with every header result
    assert asyncio.run(left_in_queue()) == 0  # ...and no second callback is waiting to run
    racers = [w for w in workers if "canvas_app.square[" in log_of(w)]
    assert len(racers) >= 2, "the header ran on one worker only: nothing raced"


def log_of(worker: Popen[str]) -> str:
    return Path(worker.log_path).read_text()  # type: ignore[attr-defined]
