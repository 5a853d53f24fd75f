"""OpenTelemetry spans of messages: "<queue> publish" when sent, "<queue> process" when run.

Follows the messaging semantic conventions. The producer injects the trace context into the
message's headers (W3C ``traceparent``, through the configured propagator), so the consumer's
process span is a child of the publish span, and whatever the task sends is a child of the
process span: a web request's trace continues through chains, groups and chords. A retry
keeps the original message's context and carries the previous attempt's in ``tracelink``:
each attempt is a process span of its own, linked to the one before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from asyncq.__about__ import __version__

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from asyncq.message import Message

__all__ = ["LINK_HEADER", "SYSTEM", "ProducerTracing", "message_attributes", "tracer_for"]

#: ``messaging.system`` of every span.
SYSTEM: Final = "asyncq"
#: The header carrying the previous attempt's context on a retry.
LINK_HEADER: Final = "tracelink"


def message_attributes(message: Message, operation: str) -> dict[str, Any]:
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
            f"{message.queue} publish",
            kind=SpanKind.PRODUCER,
            attributes=message_attributes(message, "publish"),
        )
        # Injected from a context holding the span, without making it current (cheaper).
        self._inject(headers, trace.set_span_in_context(span))
        span.end()
        message.headers = headers


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer:
    """asyncq's tracer from ``provider`` (None: the global one)."""
    return trace.get_tracer("asyncq", __version__, tracer_provider=provider)
