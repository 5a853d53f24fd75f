"""OpenTelemetry spans of messages: "<queue> publish" when sent, "<queue> process" when run.

Follows the messaging semantic conventions. The producer injects the trace context into the
message's headers (W3C ``traceparent``, through the configured propagator), so the consumer's
process span is a child of the publish span, and whatever the task sends is a child of the
process span: a web request's trace continues through chains, groups and chords. A retry
keeps the original message's context and carries the previous attempt's in ``tracelink``:
each attempt is a process span of its own, linked to the one before.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from asyncq.__about__ import __version__
from asyncq.events.emitter import NoEvents
from asyncq.worker.tracking import JobBook

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from asyncq.message import Message
    from asyncq.task import Request

__all__ = ["LINK_HEADER", "SYSTEM", "ConsumerTracing", "ProducerTracing", "TracedJobBook"]

#: ``messaging.system`` of every span.
SYSTEM: Final = "asyncq"
#: The header carrying the previous attempt's context on a retry.
LINK_HEADER: Final = "tracelink"


def _attributes(message: Message, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": message.queue,
        "messaging.message.id": message.id,
        "messaging.asyncq.task.name": message.task,
        "messaging.asyncq.task.retries": message.retries,
    }
    if message.root_id is not None:
        attributes["messaging.message.conversation_id"] = message.root_id
    return attributes


class ProducerTracing:
    """The publish hook (``app.publish_hook``): a PRODUCER span, its context into the headers."""

    #: Workers of an app with this hook open process spans (see asyncq.worker.observers).
    consumer_spans = True

    def __init__(self, tracer: trace.Tracer, propagator: TextMapPropagator | None) -> None:
        self.tracer = tracer
        self.propagator = propagator

    def _inject(self, carrier: dict[str, Any], ctx: otel_context.Context | None = None) -> None:
        if self.propagator is not None:
            self.propagator.inject(carrier, context=ctx)
        else:
            propagate.inject(carrier, context=ctx)

    def __call__(self, message: Message) -> None:
        headers = dict(message.headers)
        if message.retries and "traceparent" in headers:
            # A retry, sent while the attempt's process span is current: it keeps the original
            # parent, and links to that attempt.
            link: dict[str, Any] = {}
            self._inject(link)
            if "traceparent" in link:
                headers[LINK_HEADER] = link["traceparent"]
            message.headers = headers
            return
        span = self.tracer.start_span(
            f"{message.queue} publish", kind=SpanKind.PRODUCER, attributes=_attributes(message, "publish")
        )
        # Injected from a context holding the span, without making it current (cheaper).
        self._inject(headers, trace.set_span_in_context(span))
        span.end()
        message.headers = headers


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
        attributes = _attributes(message, "process")
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


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer:
    """asyncq's tracer from ``provider`` (None: the global one)."""
    return trace.get_tracer("asyncq", __version__, tracer_provider=provider)
