"""What watches a worker besides events: Prometheus metrics and OpenTelemetry tracing.

Decided once when the worker starts: with both off the runner keeps its plain hooks and job
book, so nothing is paid per task; each one enabled adds its hooks beside the events'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncq.events.fanout import combine

if TYPE_CHECKING:
    from asyncq.events.emitter import NoEvents
    from asyncq.worker.job import JobRunner
    from asyncq.worker.worker import Worker

__all__ = ["Observers"]


class Observers:
    """The metrics and tracing of one worker, while it serves."""

    def __init__(self) -> None:
        self.hooks: list[NoEvents] = []

    async def start(self, worker: Worker, runner: JobRunner, events: NoEvents) -> None:
        """Install the enabled observers in ``runner``, beside the ``events`` hooks."""
        # Optional extras, imported only when enabled.
        worker.executor.child_trace_headers = None
        if getattr(worker.app.publish_hook, "consumer_spans", False):  # instrumented for tracing
            from asyncq.worker.traced import consumer_for

            traced = consumer_for(worker.app)
            if traced is not None:
                runner.book, hooks = traced
                self.hooks.append(hooks)
                # executor="process" tasks run under the process span in their child too.
                worker.executor.child_trace_headers = traced[0].context_headers
        if worker.metrics_port is not None:
            from asyncq.metrics import WorkerMetrics

            conf = worker.app.conf
            metrics = WorkerMetrics(worker, runner.book, interval=float(conf.worker_metrics_interval))
            metrics.serve_http(worker.metrics_port, str(conf.worker_metrics_host))
            self.hooks.append(metrics)
            await metrics.start()
        runner.events = combine([events, *self.hooks])

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics are served on (the chosen one when asked for port 0)."""
        for hooks in self.hooks:
            port = getattr(hooks, "port", None)
            if isinstance(port, int):
                return port
        return None

    async def aclose(self) -> None:
        """Stop serving metrics."""
        for hooks in self.hooks:
            await hooks.aclose()
