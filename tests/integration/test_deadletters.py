"""Dead-letter tools end to end: a task is dead-lettered by a real worker, shown, requeued, run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncq import App, State
from asyncq.exceptions import Reject
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

TIMEOUT = 30.0


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def dlq_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """An app on the embedded drivers, or on the shared Redis under its own key prefix."""
    if request.param != "redis":
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
        app = App("dlq", broker=url)
        yield app
        await app.aclose()
        return
    url = require_service("redis")
    prefix = unique_prefix()
    options = {"key_prefix": prefix}
    app = App(
        "dlq",
        broker=url,
        config={"broker_transport_options": options, "result_backend_transport_options": options},
    )
    yield app
    await app.aclose()
    await delete_prefix(url, prefix)


async def test_rejected_task_is_listed_shown_requeued_and_its_result_readable(dlq_app: App) -> None:
    app = dlq_app
    queue = f"dlq-{uuid.uuid4().hex[:8]}"
    fixed: list[bool] = []

    @app.task(queue=queue)
    async def fragile(x: int) -> int:
        if not fixed:
            raise Reject("input not ready")
        return x * 2

    async with app.worker(queues=[queue]):
        sent = await fragile.enqueue(21)
        assert "input not ready" in str(await sent.get(timeout=TIMEOUT, propagate=False))

        async def parked() -> bool:
            return bool(await app.dead_letters.list())

        await until(parked, timeout=TIMEOUT)  # the record is stored just before the settle
        (letter,) = await app.dead_letters.list()  # found without naming the queue
        assert (letter.id, letter.queue) == (sent.id, queue)
        assert "input not ready" in letter.reason
        shown = await app.dead_letters.show(sent.id)
        assert shown is not None and shown.body == letter.body
        assert await app.dead_letters.show("no-such-id") is None

        fixed.append(True)
        assert await app.dead_letters.requeue(sent.id) is True
        assert await app.dead_letters.requeue(sent.id) is False
        assert await sent.get(timeout=TIMEOUT) == 42  # the old failure was forgotten
        assert await sent.state() == State.SUCCESS
        assert await app.dead_letters.list(queue) == []


async def test_requeue_all_and_purge(dlq_app: App) -> None:
    app = dlq_app
    queue = f"dlq-{uuid.uuid4().hex[:8]}"
    fixed: list[bool] = []

    @app.task(queue=queue)
    async def fragile(x: int) -> int:
        if not fixed:
            raise Reject("not yet")
        return x + 1

    async with app.worker(queues=[queue]):
        sent = [await fragile.enqueue(i) for i in range(4)]
        for result in sent:
            await result.get(timeout=TIMEOUT, propagate=False)

        async def all_parked() -> bool:
            return len(await app.dead_letters.list(queue)) == 4

        await until(all_parked, timeout=TIMEOUT)
        fixed.append(True)
        assert await app.dead_letters.requeue_all() == 4
        assert [await r.get(timeout=TIMEOUT) for r in sent] == [1, 2, 3, 4]

        fixed.clear()
        last = await fragile.enqueue(9)
        await last.get(timeout=TIMEOUT, propagate=False)

        async def parked_again() -> bool:
            return len(await app.dead_letters.list(queue)) == 1

        await until(parked_again, timeout=TIMEOUT)
        assert await app.dead_letters.purge(queue) == 1
        assert await app.dead_letters.list(queue) == []
        assert await app.dead_letters.requeue(last.id) is False
