"""The worker's side of tracing: a "<queue> process" span per task run (asyncq[tracing]).

Imported only when the app is instrumented (:func:`asyncq.tracing.instrument`): the job book
opens the span when a task starts, makes it current in the job's asyncio task (what the task
sends becomes its child), and ends it when the message is settled; the hooks set its outcome.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from asyncq.events.emitter import NoEvents
from asyncq.tracing.spans import LINK_HEADER, ProducerTracing, message_attributes
from asyncq.worker.tracking import JobBook

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from asyncq.app import App
    from asyncq.message import Message
    from asyncq.task import Request

__all__ = ["ConsumerTracing", "TracedJobBook", "consumer_for"]


class _Live:
    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span = span
        self.token = token


class TracedJobBook(JobBook):
    """The worker's job book, opening a CONSUMER span when a task starts and ending it when settled.

    The span is made current in the job's asyncio task, so what the task sends (and the
    follow-ups of its workflow) become its children; sync tasks see it in their thread.
    """

    def __init__(self, tracer: trace.Tracer, propagator: TextMapPropagator | None) -> None:
        super().__init__()
        self.tracer = tracer
        self.propagator = propagator
        self.live: dict[str, _Live] = {}

    def _extract(self, carrier: dict[str, Any]) -> otel_context.Context:
        if self.propagator is not None:
            return self.propagator.extract(carrier)
        return propagate.extract(carrier)

    def start(self, task_id: str, request: Request) -> None:
        super().start(task_id, request)
        message = request.message
        if message is None or task_id in self.live:
            return
        headers = message.headers
        parent = self._extract(headers)
        links = []
        previous = headers.get(LINK_HEADER)
        if isinstance(previous, str):
            linked = trace.get_current_span(self._extract({"traceparent": previous})).get_span_context()
            if linked.is_valid:
                links.append(Link(linked, {"messaging.asyncq.link": "previous attempt"}))
        attributes = message_attributes(message, "process")
        attributes["messaging.asyncq.delivery_count"] = int(request.delivery_info.get("delivery_count", 1))
        if request.hostname:
            attributes["messaging.consumer.group.name"] = message.queue
            attributes["messaging.client.id"] = request.hostname
        span = self.tracer.start_span(
            f"{message.queue} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self.live[task_id] = _Live(span, token)

    def finish(self, task_id: str) -> None:
        super().finish(task_id)
        live = self.live.pop(task_id, None)
        if live is None:
            return
        with contextlib.suppress(ValueError):  # detached in another context: harmless here
            otel_context.detach(live.token)  # type: ignore[arg-type]
        live.span.end()

    def context_headers(self) -> dict[str, str]:
        """The current trace context (the running job's process span) as message headers."""
        carrier: dict[str, str] = {}
        if self.propagator is not None:
            self.propagator.inject(carrier)
        else:
            propagate.inject(carrier)
        return carrier

    def span(self, task_id: str) -> trace.Span | None:
        """The open process span of ``task_id``."""
        live = self.live.get(task_id)
        return None if live is None else live.span


class ConsumerTracing(NoEvents):
    """The worker hooks that give each process span its outcome."""

    enabled = True

    def __init__(self, book: TracedJobBook) -> None:
        self.book = book

    def task_succeeded(self, message: Message, runtime: float) -> None:
        span = self.book.span(message.id)
        if span is not None:
            span.set_attribute("messaging.asyncq.outcome", "succeeded")

    def task_failed(self, message: Message, exc: BaseException, runtime: float) -> None:
        span = self.book.span(message.id)
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("messaging.asyncq.outcome", "failed")

    def task_retried(self, message: Message, exc: BaseException | None, eta: float | None) -> None:
        span = self.book.span(message.id)
        if span is not None:
            if exc is not None:
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"retry: {type(exc).__name__ if exc else 'Retry'}"))
            span.set_attribute("messaging.asyncq.outcome", "retried")

    def task_rejected(self, message: Message, reason: str, requeue: bool) -> None:
        span = self.book.span(message.id)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, f"rejected: {reason}"))
            span.set_attribute("messaging.asyncq.outcome", "rejected")

    def task_dead_lettered(
        self, message: Message | None, reason: str, *, task_id: str = "", queue: str = ""
    ) -> None:
        span = self.book.span(message.id if message is not None else task_id)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))
            span.set_attribute("messaging.asyncq.outcome", "dead_lettered")


def consumer_for(app: App) -> tuple[TracedJobBook, ConsumerTracing] | None:
    """A worker's job book and hooks for tracing, if ``app`` is instrumented."""
    producer = app.publish_hook
    if not isinstance(producer, ProducerTracing):
        return None
    book = TracedJobBook(producer.tracer, producer.propagator)
    return book, ConsumerTracing(book)
