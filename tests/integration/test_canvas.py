"""Canvas end to end: workflows run by an embedded worker on every available driver.

Each test gets a fresh app on memory://, sqlite:// and (when reachable and written) Redis,
with its own queue names, so runs never see each other's messages.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App, ChordError, GroupResult, State, chain, chord, group
from asyncq.canvas import on_task_finished
from asyncq.exceptions import ConfigurationError, TaskRevokedError
from asyncq.result import encode_record
from asyncq.signature import _Context
from tests.services import require_service

TIMEOUT = 20.0


class Boom(Exception):
    pass


def _require_driver(*modules: str) -> None:
    for module in modules:
        importlib.import_module(module)  # a broken driver import must fail the test, not skip it


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """memory://, sqlite://, Redis for both, or RabbitMQ as broker with SQLite results."""
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    broker_url = backend_url = {"memory": "memory://", "sqlite": sqlite_url}.get(request.param, "")
    if request.param == "redis":
        broker_url = backend_url = require_service("redis")
        _require_driver("asyncq.brokers.redis", "asyncq.backends.redis")
    elif request.param == "rabbitmq":
        broker_url, backend_url = require_service("rabbitmq"), sqlite_url
        _require_driver("asyncq.brokers.rabbitmq")
    app = App(
        "canvas-it",
        broker=broker_url,
        backend=backend_url,
        config={
            "task_default_queue": f"canvas-{uuid.uuid4().hex[:12]}",
            "task_default_retry_delay": 0.05,
            "result_expires": 600,
        },
    )
    yield app
    declared = getattr(app.broker, "_declared", None)  # RabbitMQ: delete this test's queues
    if declared:
        for queue in sorted(declared):
            await app.broker.delete_queue(queue)  # type: ignore[attr-defined]
    await app.aclose()


class Tasks:
    """The tasks of one test's app."""

    def __init__(self, app: App) -> None:
        self.runs: list[Any] = []

        @app.task
        async def add(x: int, y: int) -> int:
            return x + y

        @app.task
        def mul(x: int, y: int) -> int:
            return x * y

        @app.task
        async def tsum(values: list[int]) -> int:
            return sum(values)

        @app.task
        async def boom(*args: Any) -> None:
            raise Boom(f"boom{list(args)}")

        @app.task
        async def errback(task_id: str, error: dict[str, str], *extra: Any) -> list[Any]:
            return [task_id, error, *extra]

        @app.task(bind=True)
        async def ids(self: Any, *args: Any) -> dict[str, Any]:
            req = self.request
            return {"id": req.id, "parent": req.parent_id, "root": req.root_id, "args": list(args)}

        @app.task(bind=True, max_retries=3)
        async def flaky(self: Any, x: int) -> int:
            if self.request.retries == 0:
                raise self.retry(countdown=0.05)
            return x

        @app.task
        async def collect(values: list[Any]) -> list[Any]:
            self.runs.append(values)
            return values

        self.add, self.mul, self.tsum, self.boom = add, mul, tsum, boom
        self.errback, self.ids, self.flaky, self.collect = errback, ids, flaky, collect


@pytest.fixture
def t(app: App) -> Tasks:
    return Tasks(app)


# -- each construct --------------------------------------------------------------------------------


async def test_signatures(app: App, t: Tasks) -> None:
    fast = f"{app.conf.task_default_queue}-fast"
    async with app.worker(queues=[app.conf.task_default_queue, fast], concurrency=20):
        assert await t.add.s(2, 2) == 4
        res = await t.add.s(2).set(queue=fast, countdown=0.1, priority=5).enqueue(40)
        assert await res.get(timeout=TIMEOUT) == 42
        assert await (await t.add.si(1, 1).apply_async((100,))) == 2  # immutable: extra args ignored


async def test_chain(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        wf = chain(t.add.s(2, 2), t.mul.s(4), t.add.s(8))
        assert await wf == 24
        res = await (t.add.s(2, 2) | t.mul.s(4) | t.add.s(8)).enqueue()
        assert await res.get(timeout=TIMEOUT) == 24
        assert res.parent is not None and res.parent.parent is not None
        assert await res.parent.get(timeout=TIMEOUT) == 16
        assert await res.parent.parent.get(timeout=TIMEOUT) == 4
        assert await (t.add.s(1, 1) | t.add.si(5, 5)) == 10


async def test_every_message_carries_root_and_parent(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        res = await chain(t.ids.s(), t.ids.s(), chord([t.ids.si(), t.ids.si()], t.ids.s())).enqueue()
        last = await res.get(timeout=TIMEOUT)
        first = await res.parent.parent.parent.get(timeout=TIMEOUT)  # type: ignore[union-attr]
        second = await res.parent.parent.get(timeout=TIMEOUT)  # type: ignore[union-attr]
        header = await res.parent.get(timeout=TIMEOUT)  # type: ignore[union-attr]
        assert first["root"] == first["id"] and first["parent"] is None
        assert (second["root"], second["parent"]) == (first["id"], first["id"])
        assert {(h["root"], h["parent"]) for h in header} == {(first["id"], second["id"])}
        assert last["root"] == first["id"] and last["parent"] in {h["id"] for h in header}
        assert last["args"] == [header]


async def test_group(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        job = group(t.add.s(i, i) for i in range(10))
        gres = await job.enqueue()
        assert isinstance(gres, GroupResult)
        assert await gres.get(timeout=TIMEOUT) == [i * 2 for i in range(10)]
        assert await gres.completed_count() == 10
        assert await gres.ready() and await gres.successful() and await gres.state() == State.SUCCESS
        assert [await r.get(timeout=TIMEOUT) for r in gres.results] == [i * 2 for i in range(10)]
        empty = await group([]).apply_async(app=app)  # nothing to take the app from
        assert await empty.get(timeout=TIMEOUT) == []
        assert await group(t.ids.s(), t.ids.s()) is not None


async def test_chord(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=50):
        total = await chord((t.add.s(i, i) for i in range(100)), t.tsum.s())
        assert total == sum(i * 2 for i in range(100))
        assert await chord([t.add.s(1, 1)], t.tsum.s()) == 2  # one-task header
        assert await chord([], t.collect.s()) == []  # empty header: the callback runs at once


async def test_chunks_map_starmap(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        res = await t.add.chunks(zip(range(100), range(100), strict=True), 10).enqueue()
        chunks = await res.get(timeout=TIMEOUT)
        assert len(chunks) == 10
        assert [x for chunk in chunks for x in chunk] == [i * 2 for i in range(100)]
        assert await t.add.starmap([(1, 2), (3, 4)]) == [3, 7]
        assert await t.mul.starmap([(2, 3)]) == [6]  # a sync task: the batch runs in a thread
        assert await t.tsum.map([[1, 2], [3]]) == [3, 3]


async def test_link_and_link_error(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        callback = t.mul.s(10)
        callback_res = callback.freeze()
        res = await t.add.apply_async((1, 2), link=callback, link_error=t.errback.s())
        assert await res.get(timeout=TIMEOUT) == 3
        assert await callback_res.get(timeout=TIMEOUT) == 30

        errback = t.errback.s("extra")
        errback_res = errback.freeze()
        failed = await t.boom.apply_async((7,), link=t.mul.s(10), link_error=errback)
        with pytest.raises(Boom):
            await failed.get(timeout=TIMEOUT)
        task_id, error, extra = await errback_res.get(timeout=TIMEOUT)
        assert task_id == failed.id
        assert error == {"type": f"{Boom.__module__}.Boom", "message": "boom[7]"}
        assert extra == "extra"


# -- nesting ------------------------------------------------------------------------------------------


async def test_chain_of_groups_becomes_chords(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=30):
        wf = chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.tsum.s(), t.mul.s(10))
        assert await wf == 70  # add(1,1)=2 -> [3, 4] -> 7 -> 70
        res = await (group(t.add.s(i, i) for i in range(3)) | t.tsum.s()).enqueue()
        assert await res.get(timeout=TIMEOUT) == 6
        assert isinstance(res.parent, GroupResult)
        ends_in_group = await chain(t.add.s(1, 1), group(t.add.s(10), t.mul.s(10))).enqueue()
        assert isinstance(ends_in_group, GroupResult)
        assert await ends_in_group.get(timeout=TIMEOUT) == [12, 20]
        assert await ends_in_group.parent.get(timeout=TIMEOUT) == 2  # type: ignore[union-attr]


async def test_group_of_chains(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=30):
        job = group(chain(t.add.s(i, i), t.mul.s(10)) for i in range(5))
        assert await job == [i * 20 for i in range(5)]
        nested = await group(group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)).enqueue()
        assert await nested.get(timeout=TIMEOUT) == [[2, 4], 6]


async def test_chords_in_chains_and_chords_of_chains(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=30):
        middle = chain(t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.tsum.s()), t.mul.s(2))
        assert await middle == 14  # 2 -> [3, 4] -> 7 -> 14
        of_chains = chord([chain(t.add.s(1, 1), t.mul.s(3)), chain(t.add.s(2, 2), t.mul.s(3))], t.tsum.s())
        assert await of_chains == 18
        empty_in_chain = chain(t.add.s(1, 1), chord([], t.collect.s()), t.collect.s())
        assert await empty_in_chain == []
        group_body = await chord([t.add.s(1, 1), t.add.s(2, 2)], group(t.collect.s(), t.tsum.s())).enqueue()
        assert await group_body.get(timeout=TIMEOUT) == [[2, 4], 6]


async def test_chord_in_a_chord_header(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=30):
        inner = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
        assert await chord([inner, t.add.s(10, 10)], t.collect.s()) == [6, 20]


# -- errors -------------------------------------------------------------------------------------------


async def test_a_failing_step_stops_its_chain(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        errback = t.errback.s()
        errback_res = errback.freeze()
        wf = chain(t.add.s(1, 1), t.boom.s(), t.add.s(3), t.collect.s())
        wf.link_error(errback)
        res = await wf.enqueue()
        with pytest.raises(Boom, match=r"boom\[2\]"):
            await res.get(timeout=TIMEOUT)
        failed_id = res.parent.parent.id  # type: ignore[union-attr]
        assert await app.AsyncResult(failed_id).state() == State.FAILURE
        assert await res.parent.state() == State.FAILURE  # type: ignore[union-attr]
        task_id, error = await errback_res.get(timeout=TIMEOUT)
        assert task_id == failed_id and error["type"].endswith(".Boom")
        assert t.runs == []  # the steps after the failure never ran

        in_group = await chain(t.boom.s(), group(t.add.s(1), t.add.s(2))).enqueue()
        with pytest.raises(Boom):
            await in_group.get(timeout=TIMEOUT)


async def test_a_group_with_a_failure(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        gres = await group(t.add.s(1, 1), t.boom.s(), t.add.s(2, 2)).enqueue()
        with pytest.raises(Boom):
            await gres.get(timeout=TIMEOUT)
        values = await gres.get(timeout=TIMEOUT, propagate=False)
        assert values[0] == 2 and isinstance(values[1], Boom) and values[2] == 4
        assert await gres.failed() and not await gres.successful()
        assert await gres.completed_count() == 2


async def test_a_failed_header_fails_the_chord_and_runs_its_link_error(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        errback = t.errback.s()
        errback_res = errback.freeze()
        c = chord([t.add.s(1, 1), t.boom.s(), t.add.s(2, 2)], t.collect.s())
        c.link_error(errback)
        res = await c.enqueue()
        failed_id = res.parent.results[1].id  # type: ignore[union-attr]
        with pytest.raises(ChordError, match=failed_id) as info:
            await res.get(timeout=TIMEOUT)
        assert info.value.task_id == failed_id
        assert "Boom" in str(info.value)
        task_id, error = await errback_res.get(timeout=TIMEOUT)
        assert task_id == res.id
        assert error["type"] == "asyncq.exceptions.ChordError" and failed_id in error["message"]
        assert t.runs == []


async def test_a_failure_in_a_nested_chord_reaches_the_outer_link_error(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        errback = t.errback.s()
        errback_res = errback.freeze()
        inner = chord([t.add.s(1, 1), t.boom.s()], t.tsum.s())
        outer = chord([inner, t.add.s(5, 5)], t.collect.s())
        outer.link_error(errback)
        res = await outer.enqueue()
        with pytest.raises(ChordError):
            await res.get(timeout=TIMEOUT)
        task_id, error = await errback_res.get(timeout=TIMEOUT)
        assert task_id == res.id and error["type"] == "asyncq.exceptions.ChordError"


async def test_a_chain_failing_inside_a_chord_header_fails_the_chord(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        c = chord([chain(t.boom.s(), t.add.s(1)), t.add.s(2, 2)], t.collect.s())
        with pytest.raises(ChordError, match="boom"):
            await c


async def test_a_retried_header_task_still_joins(app: App, t: Tasks) -> None:
    async with app.worker(concurrency=20):
        assert await chord([t.flaky.s(1), t.add.s(1, 1), t.flaky.s(3)], t.collect.s()) == [1, 2, 3]


async def test_a_duplicated_header_task_counts_once(app: App, t: Tasks) -> None:
    """A redelivered header task (Celery #3535) neither joins early nor joins twice."""

    @app.task
    async def slow(x: int) -> int:
        # Finish only once the other two and the duplicate have counted: the count reaches
        # the header's size while this task still runs, and the join must not fire yet.
        async with asyncio.timeout(TIMEOUT):
            while await app.backend.incr(f"chord:{c.header.group_id}", 0) < 3:
                await asyncio.sleep(0.01)
        return x

    c = chord([t.add.s(1, 1), t.add.s(2, 2), slow.s(3)], t.collect.s())
    res = c.freeze()
    messages = await c._build(app, _Context())
    async with app.worker(concurrency=20):
        await app.send_many([*messages, messages[0]])  # as a broker's redelivery would
        assert await res.get(timeout=TIMEOUT) == [2, 4, 3]
    assert t.runs == [[2, 4, 3]]
    assert await app.broker.queue_length(app.conf.task_default_queue) == 0  # no second callback queued


async def test_a_header_task_that_never_ran_fails_the_chord(app: App, t: Tasks) -> None:
    """The contract for the worker's other outcomes (expired, dead-lettered): any non-SUCCESS counts."""
    c = chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s())
    res = c.freeze()
    first, second = await c._build(app, _Context())
    async with app.worker(concurrency=10):
        await app.send_message(first)
        error = TaskRevokedError("expired before it ran")
        record = encode_record(app.serializers, task_id=second.id, status=State.REVOKED, exc=error)
        await app.backend.set(second.id, record, final=True, ttl=None)
        await on_task_finished(app, second, State.REVOKED, None, error)
        with pytest.raises(ChordError, match=second.id):
            await res.get(timeout=TIMEOUT)
    assert t.runs == []


async def test_a_group_of_10000_is_published_in_batches(app: App, t: Tasks) -> None:
    broker = app.broker
    calls: list[int] = []
    publish_many = broker.publish_many

    async def counting(messages: Any) -> None:
        calls.append(len(messages))
        await publish_many(messages)

    broker.publish_many = counting  # type: ignore[method-assign]
    gres = await group(t.add.s(i, i) for i in range(10_000)).enqueue()
    assert len(gres.results) == 10_000
    assert sum(calls) == 10_000 and len(calls) <= 20
    assert await broker.queue_length(app.conf.task_default_queue) == 10_000
    await app.purge()


async def test_chords_refuse_a_backend_without_counters(app: App, t: Tasks) -> None:
    backend = app.backend
    capabilities = backend.capabilities
    try:
        backend.capabilities = type(capabilities)(counters=False)  # type: ignore[misc, call-arg]
        with pytest.raises(ConfigurationError, match="counters"):
            await chord([t.add.s(1, 1)], t.tsum.s()).enqueue()
    finally:
        backend.capabilities = capabilities  # type: ignore[misc]
