"""A message whose task kills its worker is never multiplied on a RabbitMQ queue.

Each run of the task ends its worker process with ``os._exit`` right after the broker's
bookkeeping re-published the message; workers are started again one after another until the
message is dead-lettered. It must land in ``<queue>.dead`` once, after at most
``worker_max_deliveries`` runs as a suspect (docs/worker.md): its first, unsuspected run plus
that many isolated crashes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq.brokers.rabbitmq import RabbitMQBroker
from tests.acceptance.conftest import asyncq, wait_for
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture

APP = "tests.apps.crash_app:app"
MAX_RUNS = 1 + 5  # the first run, then worker_max_deliveries isolated crashes
RESTARTS = 25


async def _counts(url: str, queue: str) -> tuple[int, int]:
    broker = RabbitMQBroker(url)
    try:
        await broker.connect()
        dead = await broker.dead_letters(queue, limit=1000)
        return await broker.queue_length(queue), len(dead)
    finally:
        await broker.aclose()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_task_that_kills_its_worker_is_dead_lettered_once(
    rabbitmq_url: str,  # noqa: F811 - the session fixture
    start_worker: Callable[..., Popen[str]],
    store_env: dict[str, str],
    tmp_path: Path,
    queue_type: str,
) -> None:
    queue = f"copies-{queue_type}-{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_url}?queue_type={queue_type}"
    markers = tmp_path / "runs"
    markers.mkdir()
    env = dict(store_env)
    env["ASYNCQ_BROKER_URL"] = url
    env["ASYNCQ_RESULT_BACKEND"] = "memory://"
    sent = asyncq(
        "enqueue",
        APP,
        "tests.apps.crash_app.crash",
        "--args",
        json.dumps([str(markers)]),
        "--queue",
        queue,
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    for _ in range(RESTARTS):
        worker = start_worker(APP, "-Q", queue, env=env)

        def settled(worker: Popen[str] = worker) -> bool:
            if worker.poll() is not None:
                return True
            ready, dead = asyncio.run(_counts(url, queue))
            return ready == 0 and dead > 0

        wait_for(settled, timeout=60, what="the worker to die or the message to be dead-lettered")
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        ready, dead = asyncio.run(_counts(url, queue))
        if ready == 0 and dead > 0:
            break
    ready, dead = asyncio.run(_counts(url, queue))
    runs = sorted(p.name for p in markers.iterdir())
    assert (ready, dead) == (0, 1), f"{dead} copies in {queue}.dead, {ready} left; runs: {runs}"
    assert 1 <= len(runs) <= MAX_RUNS, runs
