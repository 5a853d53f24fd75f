"""A worker's Prometheus endpoint: task metrics, its gauges, and the HTTP server serving them.

Gauges read the worker when scraped (in the server's thread: only atomic reads of its
state); queue lengths and the event loop's lag are sampled by one background task every
``worker_metrics_interval`` seconds, since they need the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    start_http_server,
)

from asyncq._utils import cancel_and_wait
from asyncq.exceptions import AsyncqError, ConfigurationError
from asyncq.metrics.collector import TaskMetrics

if TYPE_CHECKING:
    from asyncq.worker.tracking import JobBook
    from asyncq.worker.worker import Worker

__all__ = ["WorkerMetrics"]

logger = logging.getLogger(__name__)


class WorkerMetrics(TaskMetrics):
    """The metrics of one worker, in a registry of its own (several workers may share a process).

    Adds the gauges ``asyncq_tasks_in_flight``, ``asyncq_tasks_prefetched``,
    ``asyncq_worker_concurrency`` and ``asyncq_event_loop_lag_seconds``, and the process's
    own (``process_*``, ``python_gc_*``, ``python_info``).
    """

    def __init__(self, worker: Worker, book: JobBook, *, interval: float) -> None:
        registry = CollectorRegistry(auto_describe=True)
        super().__init__(registry)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            with contextlib.suppress(ValueError):  # not available on this platform
                registry.register(collector)
        if interval <= 0:
            raise ConfigurationError(f"worker_metrics_interval must be > 0 seconds, got {interval:g}")
        self.worker = worker
        self.book = book
        self.interval = interval
        Gauge("asyncq_tasks_in_flight", "Tasks running now.", registry=registry).set_function(
            lambda: worker.in_flight
        )
        Gauge(
            "asyncq_tasks_prefetched",
            "Messages taken from the broker and not started yet.",
            registry=registry,
        ).set_function(self._prefetched)
        Gauge(
            "asyncq_worker_concurrency", "Tasks the worker runs at once, at most.", registry=registry
        ).set_function(lambda: worker.concurrency)
        self.loop_lag = Gauge(
            "asyncq_event_loop_lag_seconds",
            "How late the event loop ran a timer, at the last sample.",
            registry=registry,
        )
        self._server: Any = None
        self._thread: Any = None
        self._sampler: asyncio.Task[None] | None = None
        self._queues: set[str] = set()
        self.port: int | None = None

    def _prefetched(self) -> int:
        entries = list(self.book.entries.values())  # one C-level copy: safe from this thread
        return sum(1 for e in entries if e.started is None) + (self.worker.waiting is not None)

    # -- serving -----------------------------------------------------------------------------------

    def serve_http(self, port: int, host: str) -> None:
        """Serve ``/metrics`` on ``host:port`` (0: a free port, then in :attr:`port`) from a thread."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.port = int(self._server.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    async def start(self) -> None:
        """Start sampling queue lengths and the loop's lag."""
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_forever(), name="asyncq.metrics")

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._sample_queues()
            planned = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.loop_lag.set(max(0.0, loop.time() - planned))

    async def _sample_queues(self) -> None:
        queues = set(self.worker.queues)
        for gone in self._queues - queues:
            self.forget_queue(gone)
        self._queues = queues
        broker = self.worker.app.broker
        for queue in sorted(queues):
            try:
                async with asyncio.timeout(max(self.interval, 5.0)):
                    self.set_queue_length(queue, await broker.queue_length(queue))
                    if broker.capabilities.fair_queuing:
                        self.set_fair_keys(queue, await broker.active_fair_keys(queue))
            except (AsyncqError, TimeoutError) as exc:  # metrics must not stop the worker
                logger.debug("could not sample the length of queue %s: %r", queue, exc)

    async def aclose(self) -> None:
        """Stop sampling and serving."""
        await cancel_and_wait(self._sampler)
        self._sampler = None
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits for the serving thread's loop: not on the event loop's thread.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
