"""Celery producers on RabbitMQ (Celery's AMQP layout, results over rpc://) feeding an asyncq worker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.celery_procs as procs
from asyncq import App
from asyncq.exceptions import TimeoutError  # noqa: A004 - asyncq's, a builtin's subclass
from tests.celery_procs import WAIT
from tests.services import require_service

pytest.importorskip("celery", reason="the celery extra is not installed")
aio_pika = pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture
def amqp_url() -> str:
    return require_service("rabbitmq")


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"celery-it-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.exchange_delete(name)


async def celery_call(amqp_url: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Send one task with the Celery producer on RabbitMQ, reading its result over rpc://."""
    return await procs.celery_call(amqp_url, spec, backend="rpc://")


async def test_celery_on_rabbitmq_gets_asyncq_results_over_rpc(amqp_url: str, queue: str) -> None:
    app = procs.interop_app(amqp_url, queue)
    async with app.worker():
        # Producers at once: each is a Celery process start, the slow part here.
        added, failed, later, retried, gave_up = await asyncio.gather(
            celery_call(amqp_url, {"name": "interop.add", "args": [2, 3], "options": {"queue": queue}}),
            celery_call(amqp_url, {"name": "interop.fail", "args": ["bad"], "options": {"queue": queue}}),
            celery_call(amqp_url, {"name": "interop.context", "options": {"queue": queue, "countdown": 1.5}}),
            celery_call(amqp_url, {"name": "interop.flaky", "args": [2], "options": {"queue": queue}}),
            celery_call(amqp_url, {"name": "interop.hopeless", "options": {"queue": queue}}),
        )
    await app.aclose()
    assert added["ok"] == 5 and added["state"] == "SUCCESS"
    assert failed["error"] == "ValueError" and failed["args"] == ["bad"]
    assert later["ok"]["now"] >= later["sent_at"] + 1.5 - 0.05  # not run before its countdown
    assert retried["ok"] == 2
    assert gave_up["error"] == "LookupError" and gave_up["args"] == ["still broken"]


async def test_asyncq_sends_to_a_celery_worker_on_rabbitmq(amqp_url: str, queue: str, tmp_path: Path) -> None:
    results_url = os.environ.get("CELERY_INTEROP_URL", require_service("redis").rsplit("/", 1)[0] + "/13")
    log = tmp_path / "celery-worker.log"
    app = App(
        "sender",
        broker="memory://",
        config={"celery_broker_url": amqp_url, "celery_result_backend": results_url},
    )
    try:
        with procs.celery_worker(amqp_url, queue, log, backend=results_url):
            product = await app.send_task("celery_side.mul", [3, 4], queue=queue, protocol="celery")
            failing = await app.send_task(
                "celery_side.boom", ["gone"], queue=queue, protocol="celery", countdown=0.5
            )
            retried = await app.send_task("celery_side.flaky", [2], queue=queue, protocol="celery")
            assert await product.get(timeout=WAIT) == 12
            assert await retried.get(timeout=WAIT) == 2
            with pytest.raises(KeyError, match="gone"):
                await failing.get(timeout=WAIT)
    finally:
        await app.aclose()


async def test_asyncq_reads_a_celery_workers_rpc_results(amqp_url: str, queue: str, tmp_path: Path) -> None:
    app = App("sender", broker="memory://", config={"celery_broker_url": amqp_url})  # results: rpc://
    try:
        with procs.celery_worker(amqp_url, queue, tmp_path / "celery-worker.log", backend="rpc://"):
            product = await app.send_task("celery_side.mul", [3, 4], queue=queue, protocol="celery")
            failing = await app.send_task("celery_side.boom", ["gone"], queue=queue, protocol="celery")
            retried = await app.send_task("celery_side.flaky", [2], queue=queue, protocol="celery")
            assert await product.get(timeout=WAIT) == 12
            assert await product.state() == "SUCCESS"
            assert await retried.get(timeout=WAIT) == 2
            with pytest.raises(KeyError, match="gone"):
                await failing.get(timeout=WAIT)
            meta = await failing.meta()
            assert meta is not None and meta["status"] == "FAILURE" and "KeyError" in meta["traceback"]
            ignored = await app.send_task(
                "celery_side.mul", [1, 1], queue=queue, protocol="celery", ignore_result=True
            )
            with pytest.raises(TimeoutError):
                await ignored.get(timeout=0.5)  # Celery sends no result: a timeout, not a hang
    finally:
        await app.aclose()
