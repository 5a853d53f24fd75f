"""Celery producers on RabbitMQ (Celery's AMQP layout, results over rpc://) feeding an asyncq worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App
from tests.services import require_service

pytest.importorskip("celery", reason="the celery extra is not installed")
aio_pika = pytest.importorskip("aio_pika")

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WAIT = 90.0


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
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CELERY_INTEROP_URL": amqp_url,
        "CELERY_INTEROP_BACKEND": "rpc://",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.apps.celery_producer",
        json.dumps(spec),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT + 30)
    except BaseException:
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_celery_on_rabbitmq_gets_asyncq_results_over_rpc(amqp_url: str, queue: str) -> None:
    app = App(
        "interop-amqp", broker="memory://", config={"celery_queues": [queue], "celery_broker_url": amqp_url}
    )

    @app.task(name="interop.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    @app.task(name="interop.flaky", bind=True, max_retries=5)
    async def flaky(self: Any, until: int) -> int:
        if self.request.retries < until:
            raise self.retry(countdown=0.2)
        return int(self.request.retries)

    async with app.worker():
        added = await celery_call(
            amqp_url, {"name": "interop.add", "args": [2, 3], "options": {"queue": queue}}
        )
        failed = await celery_call(
            amqp_url, {"name": "interop.fail", "args": ["bad"], "options": {"queue": queue}}
        )
        later = await celery_call(
            amqp_url, {"name": "interop.flaky", "args": [1], "options": {"queue": queue, "countdown": 1}}
        )
    await app.aclose()
    assert added["ok"] == 5 and added["state"] == "SUCCESS"
    assert failed["error"] == "ValueError" and failed["args"] == ["bad"]
    assert later["ok"] == 1
