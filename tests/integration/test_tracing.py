"""OpenTelemetry spans through a FastAPI request, a chain, a retry and a chord, with embedded workers.

The spans go to the SDK's in-memory exporter; the test checks the tree they form: the
request's trace continues into every task, each process span is a child of its publish span,
and a retried attempt is a process span of its own, linked to the one before.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncq import App, chain, chord
from asyncq.tracing import LINK_HEADER, instrument, uninstrument
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

TIMEOUT = 15.0


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider, spans
    provider.shutdown()


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    backend = f"sqlite:///{tmp_path / 'results.db'}"
    prefix = None
    if request.param == "memory":
        broker = backend = "memory://"
    elif request.param == "sqlite":
        broker = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        prefix = unique_prefix()
        broker = f"{require_service('redis')}?key_prefix={prefix}"
    config = {"task_default_queue": f"tr-{uuid.uuid4().hex[:8]}", "task_default_retry_delay": 0.05}
    app = App("tr", broker=broker, backend=backend, config=config)
    yield app
    await app.aclose()
    if prefix is not None:
        await delete_prefix(require_service("redis"), prefix)


def register(app: App) -> dict[str, Any]:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=3)
    async def flaky(self: Any, x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(exc=RuntimeError("first attempt"), countdown=0.05)
        return x

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    return {"add": add, "flaky": flaky, "total": total}


async def finished(spans: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The finished spans once there are ``count`` process spans (they end after the result is stored)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done = list(spans.get_finished_spans())
        if sum(s.kind is SpanKind.CONSUMER for s in done) >= count:
            return done
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {count} process spans: {[s.name for s in done]}")
        await asyncio.sleep(0.02)


def message_id(span: ReadableSpan) -> str:
    return str((span.attributes or {})["messaging.message.id"])


async def test_a_request_trace_continues_through_a_chain_a_retry_and_a_chord(
    app: App, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    instrument(app, tracer_provider=provider)
    t = register(app)
    web = FastAPI()
    FastAPIInstrumentor.instrument_app(web, tracer_provider=provider)

    @web.post("/orders")
    async def order() -> dict[str, str]:
        workflow = chain(
            t["add"].s(1, 1), t["flaky"].s(), chord([t["add"].si(2, 2), t["add"].si(3, 3)], t["total"].s())
        )
        result = await workflow.enqueue()
        return {"id": result.id}

    queue = app.conf.task_default_queue
    async with app.worker(concurrency=10):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/orders", timeout=TIMEOUT)
        assert response.status_code == 200
        assert await app.AsyncResult(response.json()["id"]).get(timeout=TIMEOUT) == 10  # (2+2) + (3+3)
        # add, flaky twice, the chord's two, total
        done = await finished(spans, 6)
    FastAPIInstrumentor.uninstrument_app(web)

    (request,) = [s for s in done if s.kind is SpanKind.SERVER]
    ours = [s for s in done if s.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER)]
    assert {s.context.trace_id for s in ours} == {request.context.trace_id}
    by_id = {s.context.span_id: s for s in done}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    for span in ours:
        attributes = span.attributes or {}
        operation = "publish" if span.kind is SpanKind.PRODUCER else "process"
        assert span.name == f"{queue} {operation}"
        assert attributes["messaging.system"] == "asyncq"
        assert attributes["messaging.destination.name"] == queue
        assert attributes["messaging.operation"] == operation
        if span.kind is SpanKind.CONSUMER:  # each run is a child of its message's publish span
            sent = parent(span)
            assert sent.kind is SpanKind.PRODUCER and message_id(sent) == message_id(span)

    def process(task: str) -> list[ReadableSpan]:
        return sorted(
            (
                s
                for s in ours
                if s.kind is SpanKind.CONSUMER and (s.attributes or {})["messaging.asyncq.task.name"] == task
            ),
            key=lambda s: int((s.attributes or {})["messaging.asyncq.task.retries"]),
        )

    # The request -> publish -> process, for the chain's first task only.
    (first,) = [s for s in process(t["add"].name) if parent(parent(s)) is request]
    retried, succeeded = process(t["flaky"].name)
    assert parent(parent(retried)) is first  # the chain's next step is sent from the first's run
    assert parent(succeeded) is parent(retried)  # both attempts: children of the one publish
    assert retried.status.status_code is StatusCode.ERROR
    assert (retried.attributes or {})["messaging.asyncq.outcome"] == "retried"
    assert [link.context.span_id for link in succeeded.links] == [retried.context.span_id]
    header = [s for s in process(t["add"].name) if s is not first]
    assert len(header) == 2
    assert all(parent(parent(s)) is succeeded for s in header)  # the chord is sent by flaky's success
    (callback,) = process(t["total"].name)
    assert parent(parent(callback)) in header  # sent when the last header task finished
    assert all(s.status.status_code is not StatusCode.ERROR for s in [first, succeeded, *header, callback])


async def test_a_failure_is_recorded_on_its_process_span(
    app: App, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    instrument(app, tracer_provider=provider)

    @app.task
    async def boom() -> None:
        raise ValueError("boom")

    async with app.worker():
        await (await boom.enqueue()).get(timeout=TIMEOUT, propagate=False)
        (run,) = [s for s in await finished(spans, 1) if s.kind is SpanKind.CONSUMER]
    assert run.status.status_code is StatusCode.ERROR
    assert [event.name for event in run.events] == ["exception"]
    assert (run.events[0].attributes or {})["exception.type"] == "ValueError"


async def test_a_process_task_runs_under_its_process_span_in_the_child(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    from tests.apps import traced_process_app

    provider, spans = exporter
    app = traced_process_app.app
    instrument(app, tracer_provider=provider)
    try:
        async with app.worker():
            seen = await (await traced_process_app.traced_work.enqueue()).get(timeout=30)
            (run,) = [s for s in await finished(spans, 1) if s.kind is SpanKind.CONSUMER]
    finally:
        uninstrument(app)
        await app.aclose()
    assert run.context is not None and run.start_time is not None and run.end_time is not None
    assert message_id(run) == (run.attributes or {})["messaging.message.id"]
    # In the child, the worker's process span is current, and a span opened there is its child.
    assert seen["current"] == [run.context.trace_id, run.context.span_id]
    assert seen["parent"] == seen["current"] and seen["trace_id"] == run.context.trace_id
    # ...and lies within it in time (both clocks are this machine's).
    assert run.start_time <= seen["start"] <= seen["end"] <= run.end_time


async def test_uninstrumented_apps_add_no_trace_headers(
    app: App, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    instrument(app, tracer_provider=provider)
    uninstrument(app)

    @app.task
    async def headers() -> dict[str, Any]:
        from asyncq import current_task

        task = current_task()
        assert task is not None
        return dict(task.request.headers)

    async with app.worker():
        seen = await (await headers.enqueue()).get(timeout=TIMEOUT)
    assert "traceparent" not in seen and LINK_HEADER not in seen
    assert isinstance(seen["sent_at"], float)
    assert spans.get_finished_spans() == ()


async def test_the_tracing_setting_instruments_the_app_when_it_connects(tmp_path: Path) -> None:
    app = App("tr", broker="memory://", backend="memory://", config={"tracing": True})
    assert app.publish_hook is None
    async with app:
        assert app.publish_hook is not None
