"""Prometheus metrics (extra ``asyncq[metrics]``): a worker's endpoint and a collector fed by events.

- ``asyncq run --metrics-port 9808`` (or ``worker_metrics_port``) serves a worker's metrics;
- :class:`TaskMetrics` counts tasks from a worker's hooks or from ``app.events.stream()``
  event dicts (:meth:`TaskMetrics.feed`), into any registry;
- :func:`render` turns a registry into an HTTP response body and content type, for any web
  framework (the dashboard's ``/metrics``).

Metric names and labels: docs/monitoring.md.
"""

from __future__ import annotations

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asyncq.exceptions import ConfigurationError

    raise ConfigurationError("metrics need prometheus_client: pip install 'asyncq[metrics]'") from exc

from asyncq.metrics.collector import OUTCOMES, QUEUE_WAIT_BUCKETS, RUNTIME_BUCKETS, TaskMetrics
from asyncq.metrics.worker import WorkerMetrics

__all__ = [
    "OUTCOMES",
    "QUEUE_WAIT_BUCKETS",
    "RUNTIME_BUCKETS",
    "CollectorRegistry",
    "TaskMetrics",
    "WorkerMetrics",
    "render",
]


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The body and ``Content-Type`` of a scrape of ``registry``.

    ``accept`` is the request's ``Accept`` header: OpenMetrics if it asks for it, else the
    Prometheus text format.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
