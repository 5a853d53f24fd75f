"""A process-executor task that opens a span in its child: the tracing test's own app (memory://)."""

from __future__ import annotations

from typing import Any

from asyncq import App

app = App("traced-process", broker="memory://", backend="memory://")


@app.task(executor="process")
def traced_work() -> dict[str, Any]:
    """Open a span of its own in the child (its own SDK provider) and tell what it saw."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    current = trace.get_current_span().get_span_context()
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with provider.get_tracer("child").start_as_current_span("crunch"):
        sum(i * i for i in range(1000))
    (span,) = spans.get_finished_spans()
    assert span.parent is not None
    return {
        "current": [current.trace_id, current.span_id],
        "parent": [span.parent.trace_id, span.parent.span_id],
        "trace_id": span.context.trace_id,
        "start": span.start_time,
        "end": span.end_time,
    }
