"""Celery interop on Redis, against real Celery processes (producer and worker subprocesses).

Everything lives in Redis db 13 (``CELERY_INTEROP_URL``), under queue names unique to each
test; the keys a test made are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.celery_procs as procs
from asyncq import App, group, signature
from asyncq.celery.producer import CeleryResult
from asyncq.celery.protocol import decode_envelope
from asyncq.exceptions import ConfigurationError
from tests.celery_procs import WAIT
from tests.helpers import until
from tests.services import missing, require_service

pytest.importorskip("celery", reason="the celery extra is not installed")

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def celery_url() -> str:
    base = require_service("redis").rsplit("/", 1)[0]
    return os.environ.get("CELERY_INTEROP_URL", f"{base}/13")


@pytest.fixture
def queue() -> str:
    return f"celery-it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(celery_url: str, queue: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(celery_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"*{queue}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def celery_call(celery_url: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Send one task with the Celery producer (broker and results on ``celery_url``)."""
    return await procs.celery_call(celery_url, spec)


# -- Celery producer -> asyncq worker ------------------------------------------------------------


async def test_celery_producer_gets_asyncq_result(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    async with app.worker():
        seen = await celery_call(
            celery_url, {"name": "interop.add", "args": [2, 3], "options": {"queue": queue}}
        )
        mapped = await celery_call(
            celery_url, {"name": "legacy.multiply", "args": [6, 7], "options": {"queue": queue}}
        )
    await app.aclose()
    assert seen["ok"] == 5 and seen["state"] == "SUCCESS"
    assert mapped["ok"] == 42
    meta = json.loads(await redis.get(f"celery-task-meta-{seen['id']}"))
    assert meta["status"] == "SUCCESS" and meta["task_id"] == seen["id"] and meta["date_done"]
    assert await redis.llen(queue) == 0
    assert not any(queue.encode() in parked for parked in await redis.hvals("unacked"))


async def test_celery_caller_sees_failure_with_its_type(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    async with app.worker():
        failed = await celery_call(
            celery_url, {"name": "interop.fail", "args": ["bad input"], "options": {"queue": queue}}
        )
        unknown = await celery_call(celery_url, {"name": "interop.nope", "options": {"queue": queue}})
    await app.aclose()
    assert failed["error"] == "ValueError" and failed["module"] == "builtins"
    assert failed["args"] == ["bad input"] and failed["state"] == "FAILURE"
    meta = json.loads(await redis.get(f"celery-task-meta-{failed['id']}"))
    assert "ValueError: bad input" in meta["traceback"]
    assert unknown["error"] == "NotRegistered" and "interop.nope" in unknown["args"][0]


async def test_a_concurrency_key_holds_celery_messages_too(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    async with app.worker(concurrency=8):
        seen = await celery_call(
            celery_url,
            {"name": "interop.serial", "many": [["acme"]] * 4 + [["other"]], "options": {"queue": queue}},
        )
    await app.aclose()
    assert seen["ok"] == [1, 1, 1, 1, 1]  # never two calls of one tenant at once
    assert await redis.llen(queue) == 0


async def test_celery_jobs_are_inspected_and_revoked_like_native_ones(
    celery_url: str, queue: str, redis: Redis
) -> None:
    app = procs.interop_app(celery_url, queue)
    forever_id, early_id = f"{queue}-forever", f"{queue}-early"
    async with app.worker(hostname="w-celery"):
        inspect = app.control.inspect(destination=["w-celery"], timeout=2.0)
        call = asyncio.create_task(
            celery_call(
                celery_url, {"name": "interop.forever", "options": {"queue": queue, "task_id": forever_id}}
            )
        )

        async def running() -> bool:
            active = (await inspect.active()).get("w-celery", [])
            return [(t.id, t.name, t.queue) for t in active] == [(forever_id, "interop.forever", queue)]

        await until(running, "the Celery job in inspect().active()", timeout=WAIT)
        replies = await app.control.revoke(forever_id, terminate=True, reply=True, timeout=2.0)
        assert "terminated 1" in replies["w-celery"].message
        seen = await asyncio.wait_for(call, WAIT)
        await app.control.revoke(early_id)  # before it is sent: the worker skips it
        early = await celery_call(
            celery_url,
            {"name": "interop.add", "args": [1, 2], "options": {"queue": queue, "task_id": early_id}},
        )
        assert (await inspect.active())["w-celery"] == []
    await app.aclose()
    assert (seen["error"], seen["state"]) == ("TaskRevokedError", "REVOKED")
    assert (early["error"], early["state"]) == ("TaskRevokedError", "REVOKED")
    assert await redis.llen(queue) == 0
    assert not any(queue.encode() in parked for parked in await redis.hvals("unacked"))


async def test_countdown_headers_and_ids_cross_over(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    parent = str(uuid.uuid4())
    async with app.worker():
        seen = await celery_call(
            celery_url,
            {
                "name": "interop.context",
                "options": {
                    "queue": queue,
                    "countdown": 1.5,
                    "headers": {"custom": "value"},
                    "root_id": "root-1",
                    "parent_id": parent,
                },
            },
        )
    await app.aclose()
    context = seen["ok"]
    assert context["id"] == seen["id"]
    assert (context["root_id"], context["parent_id"]) == ("root-1", parent)
    assert context["header"] == "value" and context["queue"] == queue and context["retries"] == 0
    assert context["now"] >= seen["sent_at"] + 1.5 - 0.05  # not run before its countdown


async def test_retries_are_republished_in_celerys_protocol(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    async with app.worker():
        retried = await celery_call(
            celery_url, {"name": "interop.flaky", "args": [2], "options": {"queue": queue}}
        )
        gave_up = await celery_call(celery_url, {"name": "interop.hopeless", "options": {"queue": queue}})
    await app.aclose()
    assert retried["ok"] == 2
    assert gave_up["error"] == "LookupError" and gave_up["args"] == ["still broken"]


async def test_expired_celery_message_is_revoked(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    # Sent while no worker runs, with an expiry already past by the time one starts.
    sender = asyncio.create_task(
        celery_call(
            celery_url, {"name": "interop.add", "args": [1, 1], "options": {"queue": queue, "expires": 0.5}}
        )
    )
    while await redis.llen(queue) == 0:
        await asyncio.sleep(0.05)
    raw = await redis.lindex(queue, 0)
    _, message = decode_envelope(raw)
    assert message.expires is not None
    while time.time() <= message.expires:
        await asyncio.sleep(0.05)
    async with app.worker():
        seen = await asyncio.wait_for(sender, WAIT + 30)
    await app.aclose()
    assert seen["error"] == "TaskRevokedError" and seen["state"] == "REVOKED"


async def test_shutdown_returns_held_countdown_message(celery_url: str, queue: str, redis: Redis) -> None:
    app = procs.interop_app(celery_url, queue)
    sender = asyncio.create_task(
        celery_call(
            celery_url,
            {"name": "interop.add", "args": [4, 4], "options": {"queue": queue, "countdown": 3600}},
        )
    )
    async with app.worker():
        deadline = time.monotonic() + WAIT
        while not any(queue.encode() in parked for parked in await redis.hvals("unacked")):
            assert time.monotonic() < deadline, "the worker never took the message"
            await asyncio.sleep(0.05)
    await app.aclose()
    # Stopped before its eta: back in the queue, marked redelivered, not left in unacked.
    assert await redis.llen(queue) == 1
    envelope = json.loads(await redis.lindex(queue, 0))
    assert envelope["headers"]["redelivered"] is True
    assert await redis.hget("unacked", envelope["properties"]["delivery_tag"]) is None
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


# -- asyncq producer -> Celery worker ------------------------------------------------------------


@pytest.fixture
def celery_worker(celery_url: str, queue: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with procs.celery_worker(celery_url, queue, tmp_path / "celery-worker.log") as proc:
        yield proc
    if proc.returncode not in (0, -signal.SIGTERM):
        missing(f"the Celery worker exited with {proc.returncode}")


async def test_asyncq_sends_to_celery_worker(
    celery_url: str, queue: str, redis: Redis, celery_worker: subprocess.Popen[bytes]
) -> None:
    app = App("sender", broker="memory://", config={"celery_broker_url": celery_url})
    handle = await app.send_task("celery_side.mul", [3, 4], queue=queue, protocol="celery")
    assert await handle.get(timeout=WAIT) == 12
    assert await handle.state() == "SUCCESS"

    later = await app.send_task("celery_side.mul", [5, 5], queue=queue, protocol="celery", countdown=1)
    retried = await app.send_task("celery_side.flaky", [2], queue=queue, protocol="celery")
    failing = await app.send_task("celery_side.boom", ["missing"], queue=queue, protocol="celery")
    assert await later.get(timeout=WAIT) == 25
    assert await retried.get(timeout=WAIT) == 2
    with pytest.raises(KeyError, match="missing"):
        await failing.get(timeout=WAIT)
    meta = await failing.meta()
    assert meta is not None and meta["status"] == "FAILURE" and "KeyError" in meta["traceback"]
    await app.aclose()


async def test_send_task_celery_refuses_unknown_options(celery_url: str) -> None:
    app = App("sender", broker="memory://", config={"celery_broker_url": celery_url})
    with pytest.raises(ConfigurationError, match="unknown options: shadow"):
        app.send_task("x", protocol="celery", shadow="y")
    with pytest.raises(ConfigurationError, match="plain task signature"):
        app.send_task("x", protocol="celery", link=group(signature("a"), signature("b")))


async def test_links_sent_to_celery_run_in_the_celery_worker(
    celery_url: str, queue: str, redis: Redis, celery_worker: subprocess.Popen[bytes]
) -> None:
    app = App("sender", broker="memory://", config={"celery_broker_url": celery_url})
    then, errback = f"{queue}-then", f"{queue}-errback"
    handle = await app.send_task(
        "celery_side.mul",
        [3, 4],
        queue=queue,
        protocol="celery",
        link=signature("celery_side.mul", [10], task_id=then, queue=queue),
    )
    failing = await app.send_task(
        "celery_side.boom",
        ["gone"],
        queue=queue,
        protocol="celery",
        link_error=[signature("celery_side.note_failure", task_id=errback, queue=queue)],
    )
    assert await handle.get(timeout=WAIT) == 12
    assert await CeleryResult(then, celery_url).get(timeout=WAIT) == 120  # 12 x 10, run by Celery
    with pytest.raises(KeyError):
        await failing.get(timeout=WAIT)
    assert await CeleryResult(errback, celery_url).get(timeout=WAIT) == f"failed: {failing.id}"
    await app.aclose()


async def test_started_progress_and_success_are_published_for_celery(
    celery_url: str, queue: str, redis: Redis
) -> None:
    app = procs.interop_app(celery_url, queue)
    app.conf.task_track_started = True
    gate = asyncio.Event()

    @app.task(name="interop.progress", bind=True)
    async def progress(self: Any) -> str:
        await self.update_state(state="PROGRESS", meta={"done": 1})
        await gate.wait()
        return "finished"

    task_id = f"{queue}-progress"
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"celery-task-meta-{task_id}")
    statuses: list[str] = []
    async with app.worker():
        sender = asyncio.create_task(
            celery_call(
                celery_url, {"name": "interop.progress", "options": {"queue": queue, "task_id": task_id}}
            )
        )
        deadline = time.monotonic() + WAIT
        while "PROGRESS" not in statuses:
            assert time.monotonic() < deadline, f"saw only {statuses}"
            note = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if note is not None:
                statuses.append(json.loads(note["data"])["status"])
        meta = json.loads(await redis.get(f"celery-task-meta-{task_id}"))
        assert meta["result"] == {"done": 1} and meta["date_done"] is None
        gate.set()
        seen = await asyncio.wait_for(sender, WAIT + 30)
    await app.aclose()
    await pubsub.aclose()
    assert statuses == ["STARTED", "PROGRESS"]
    assert seen["ok"] == "finished" and seen["state"] == "SUCCESS"


async def test_task_cut_short_by_shutdown_goes_back_to_its_queue(
    celery_url: str, queue: str, redis: Redis
) -> None:
    app = procs.interop_app(celery_url, queue)
    started = asyncio.Event()

    @app.task(name="interop.stuck")
    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    sender = asyncio.create_task(
        celery_call(celery_url, {"name": "interop.stuck", "options": {"queue": queue}})
    )
    async with app.worker(shutdown_timeout=0.1):
        await asyncio.wait_for(started.wait(), WAIT)
    await app.aclose()
    assert await redis.llen(queue) == 1
    envelope = json.loads(await redis.lindex(queue, 0))
    assert envelope["headers"]["task"] == "interop.stuck" and envelope["headers"]["redelivered"] is True
    assert not any(queue.encode() in parked for parked in await redis.hvals("unacked"))
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


async def test_send_task_refuses_an_unknown_protocol_and_a_bad_eta(celery_url: str) -> None:
    app = App("sender", broker="memory://", config={"celery_broker_url": celery_url})
    with pytest.raises(ConfigurationError, match="unknown protocol 'kombu'"):
        app.send_task("x", protocol="kombu")
    with pytest.raises(ConfigurationError, match="eta must be an aware datetime"):
        app.send_task("x", protocol="celery", eta=5.0)


async def test_celery_queues_without_a_usable_url_stop_the_worker_in_one_line() -> None:
    app = App("misconfigured", broker="memory://", config={"celery_queues": ["celery"]})
    with pytest.raises(ConfigurationError, match="celery_queues need a Redis or RabbitMQ URL"):
        await asyncio.wait_for(app.worker().serve(), WAIT)
    await app.aclose()
