"""Celery canvas across the boundary, on Redis and RabbitMQ, with real Celery processes.

A Celery producer sends tasks with ``link`` / ``link_error`` and chains to an asyncq worker:
asyncq runs the links it has, sends the others on to a real Celery worker, and a chain's last
result (rpc:// on RabbitMQ) reaches the Celery caller.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.celery_procs import WAIT, celery_call, celery_worker, interop_app
from tests.helpers import until
from tests.services import require_service

pytest.importorskip("celery", reason="the celery extra is not installed")

pytestmark = pytest.mark.slow


@dataclass
class Side:
    broker: str  # where the Celery messages travel
    producer_backend: str  # where the Celery producer reads results
    results_url: str  # the Celery worker's results (Redis db 13, as in test_celery_interop)
    results: Redis
    queue: str  # consumed by the asyncq worker
    celery_queue: str  # consumed by the Celery worker


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    results_url = require_service("redis").rsplit("/", 1)[0] + "/13"
    name = f"celery-links-{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        broker, producer_backend = results_url, results_url
    else:
        broker, producer_backend = require_service("rabbitmq"), "rpc://"
    results = Redis.from_url(results_url)
    yield Side(broker, producer_backend, results_url, results, name, f"{name}-celery")
    if request.param == "redis":
        keys = [key async for key in results.scan_iter(match=f"*{name}*")]
        if keys:
            await results.delete(*keys)
    else:
        aio_pika = pytest.importorskip("aio_pika")
        connection = await aio_pika.connect(broker, timeout=10)
        async with connection:
            channel = await connection.channel()
            for queue in (name, f"{name}-celery"):
                await channel.queue_delete(queue)
                await channel.exchange_delete(queue)
    await results.aclose()


def sig(task: str, *args: Any, **options: Any) -> dict[str, Any]:
    return {"task": task, "args": list(args), "options": options}


async def test_links_errbacks_and_chains_cross_over(side: Side, tmp_path: Path) -> None:
    app = interop_app(side.broker, side.queue)  # interop.add, .mul, .fail, ...
    seen: list[dict[str, Any]] = []

    @app.task(name="interop.record", bind=True)
    async def record(self: Any, value: Any, tag: str) -> None:
        request = self.request
        seen.append({"tag": tag, "value": value, "parent": request.parent_id, "root": request.root_id})

    on_celery = f"{side.celery_queue}-mul"  # the id of the link a Celery worker runs
    call = {"backend": side.producer_backend}
    with celery_worker(side.broker, side.celery_queue, tmp_path / "celery.log", backend=side.results_url):
        async with app.worker():
            # Three producers at once: each is a Celery process start, the slow part here.
            added, failed, chained = await asyncio.gather(
                celery_call(
                    side.broker,
                    {
                        "name": "interop.add",
                        "args": [2, 3],
                        "options": {"queue": side.queue},
                        "link": [
                            sig("interop.record", "linked"),
                            sig("celery_side.mul", 10, queue=side.celery_queue, task_id=on_celery),
                        ],
                        "link_error": [sig("interop.record", "never")],
                    },
                    **call,
                ),
                celery_call(
                    side.broker,
                    {
                        "name": "interop.fail",
                        "args": ["bad"],
                        "options": {"queue": side.queue},
                        "link": [sig("interop.record", "never")],
                        "link_error": [sig("interop.record", "errback")],
                    },
                    **call,
                ),
                celery_call(
                    side.broker,
                    {
                        "chain": [sig("interop.add", 2, 3), sig("interop.mul", 4), sig("interop.add", 1)],
                        "options": {"queue": side.queue},
                    },
                    **call,
                ),
            )
            await until(lambda: len(seen) >= 2, "the link and the errback to run")

            async def mul_done() -> bool:
                return await side.results.get(f"celery-task-meta-{on_celery}") is not None

            await until(mul_done, "the Celery worker to run the link sent to it", timeout=WAIT)
    await app.aclose()
    assert added["ok"] == 5
    assert failed["error"] == "ValueError" and failed["args"] == ["bad"]
    assert chained["ok"] == 21 and chained["state"] == "SUCCESS"
    by_tag = {entry["tag"]: entry for entry in seen}
    assert set(by_tag) == {"linked", "errback"}
    assert by_tag["linked"] == {"tag": "linked", "value": 5, "parent": added["id"], "root": added["id"]}
    assert by_tag["errback"]["value"] == failed["id"]  # Celery's errback form: the failed task's id
    meta = json.loads(await side.results.get(f"celery-task-meta-{on_celery}"))
    assert meta["status"] == "SUCCESS" and meta["result"] == 50
