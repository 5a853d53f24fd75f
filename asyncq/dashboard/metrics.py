"""The dashboard's ``/metrics``: cluster-wide task metrics folded from the event stream.

A worker's own endpoint (``asyncq run --metrics-port``) counts what that worker ran; the
dashboard sees every worker's events, so its registry counts the whole cluster, and samples the
queue lengths when scraped. Needs ``asyncq[metrics]`` (prometheus_client); without it the route
answers 404 with the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncq.dashboard.service import DashboardService

__all__ = ["ClusterMetrics", "metrics_available"]


def metrics_available() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


class ClusterMetrics:
    """A private registry with asyncq's task metrics, fed one event dict at a time."""

    def __init__(self) -> None:
        self._metrics: Any = None
        self._render: Any = None
        if metrics_available():
            module: Any = importlib.import_module("asyncq.metrics")
            prometheus: Any = importlib.import_module("prometheus_client")
            self._metrics = module.TaskMetrics(prometheus.CollectorRegistry())
            self._render = module.render
        self._queues: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._metrics is not None

    def feed(self, event: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.feed(event)

    async def scrape(self, service: DashboardService, accept: str | None) -> tuple[bytes, str]:
        """Sample the queue lengths, then render the registry (OpenMetrics if ``accept`` asks)."""
        if self._metrics is None or self._render is None:
            raise RuntimeError("metrics need asyncq[metrics] (prometheus_client)")
        rows = await service.queues()
        seen = {row["name"] for row in rows}
        for row in rows:
            if row["length"] is not None:
                self._metrics.set_queue_length(row["name"], int(row["length"]))
        for gone in self._queues - seen:
            self._metrics.forget_queue(gone)
        self._queues = seen
        body, content_type = self._render(self._metrics.registry, accept)
        return body, content_type
