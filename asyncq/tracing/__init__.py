"""OpenTelemetry tracing (extra ``asyncq[tracing]``), off unless enabled.

Enable it with ``app.conf.tracing = True`` (the global tracer provider and propagator) or
:func:`instrument` (a given provider, e.g. in tests). Producers then open a "<queue> publish"
span per message and carry its context in the message's headers; workers open a
"<queue> process" span around each run, a child of it. See :mod:`asyncq.tracing.spans` and
docs/monitoring.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from opentelemetry import trace
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asyncq.exceptions import ConfigurationError

    raise ConfigurationError("tracing needs opentelemetry-api: pip install 'asyncq[tracing]'") from exc

from asyncq.tracing.spans import (
    LINK_HEADER,
    SYSTEM,
    ProducerTracing,
    tracer_for,
)

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from asyncq.app import App

__all__ = [
    "LINK_HEADER",
    "SYSTEM",
    "ProducerTracing",
    "instrument",
    "uninstrument",
]


def instrument(
    app: App,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> None:
    """Trace ``app``'s messages: publish spans from now on, process spans in workers started after.

    Args:
        tracer_provider: where spans go (default: the global provider).
        propagator: how the context travels in headers (default: the global one, W3C
            ``traceparent`` unless configured otherwise).
    """
    app.publish_hook = ProducerTracing(tracer_for(tracer_provider), propagator)


def uninstrument(app: App) -> None:
    """Stop tracing ``app``'s messages (workers started after no longer open spans)."""
    if isinstance(app.publish_hook, ProducerTracing):
        app.publish_hook = None
