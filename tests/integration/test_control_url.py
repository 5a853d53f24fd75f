"""``control_url``: presence, control, revocations and events in a store other than the broker.

An ``sqs://`` broker (moto's server, started by the tests) has no place for a control plane,
so a worker on it keeps heartbeats, control requests and events in a SQLite file: ``inspect``,
``revoke`` and the event stream work as on any other broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App
from asyncq.exceptions import ConfigurationError, TaskRevokedError
from tests.conformance.drivers_sqs import delete_queues
from tests.servers import moto_sqs

pytestmark = [pytest.mark.sqs, pytest.mark.timeout(120)]
TIMEOUT = 30.0


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    pytest.importorskip("aiobotocore")
    prefix = f"c{uuid.uuid4().hex[:10]}-"
    app = App(
        "ctlurl",
        broker=f"{moto_sqs().url}&queue_prefix={prefix}&wait_time=1",
        backend=f"sqlite:///{tmp_path / 'results.db'}",
        config={"control_url": f"sqlite:///{tmp_path / 'control.db'}", "worker_heartbeat_interval": 0.2},
    )

    @app.task(name="ctlurl.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="ctlurl.wait")
    async def wait(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    yield app
    await app.aclose()
    await delete_queues(moto_sqs().url, prefix)


async def test_inspect_and_revoke_reach_a_worker_on_sqs(app: App) -> None:
    async with app.worker(hostname="w1@sqs", concurrency=2):
        deadline = time.monotonic() + TIMEOUT
        while not await app.control.ping(destination=["w1@sqs"], timeout=1.0):
            assert time.monotonic() < deadline, "the worker never answered a ping"
        assert "ctlurl.add" in (await app.control.inspect(timeout=2.0).registered())["w1@sqs"]
        running = await app.tasks["ctlurl.wait"].enqueue(30.0)
        while not (await app.control.inspect(timeout=1.0).active()).get("w1@sqs"):
            assert time.monotonic() < deadline, "the task never showed as active"
        await running.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            await running.get(timeout=TIMEOUT)
        assert await (await app.tasks["ctlurl.add"].enqueue(2, 3)).get(timeout=TIMEOUT) == 5


async def test_events_flow_through_the_control_store(app: App) -> None:
    stream = await app.events.subscribe()
    seen: list[dict[str, Any]] = []
    try:
        async with app.worker(hostname="w2@sqs", send_events=True):
            result = await app.tasks["ctlurl.add"].enqueue(4, 4)
            assert await result.get(timeout=TIMEOUT) == 8

            async def until_succeeded() -> None:
                async for event in stream:
                    seen.append(event)
                    if event.get("type") == "task-succeeded" and event.get("uuid") == result.id:
                        return

            await asyncio.wait_for(until_succeeded(), TIMEOUT)
    finally:
        await stream.aclose()
    assert any(e.get("type") == "task-started" and e.get("uuid") == result.id for e in seen)


def test_a_broker_without_a_control_channel_says_to_set_control_url() -> None:
    from asyncq.brokers import broker_from_url
    from asyncq.brokers.control import control_channel_for

    pytest.importorskip("aiobotocore")
    with pytest.raises(ConfigurationError, match="set control_url"):
        control_channel_for(broker_from_url(moto_sqs().url))
