"""Task metrics in a Prometheus registry, fed by a worker's hooks or by monitoring events.

:class:`TaskMetrics` implements the worker's event hooks (:class:`~asyncq.events.NoEvents`),
so a worker calls it directly on its hot path (one cached counter child per call), and
:meth:`TaskMetrics.feed` takes the event dicts of ``app.events.stream()`` for a process that
watches a cluster rather than running tasks (the dashboard).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from asyncq.events.emitter import NoEvents
from asyncq.message import SENT_AT

if TYPE_CHECKING:
    from asyncq.message import Message

__all__ = ["OUTCOMES", "QUEUE_WAIT_BUCKETS", "RUNTIME_BUCKETS", "TaskMetrics"]

#: Values of the ``outcome`` label of ``asyncq_tasks_total``.
OUTCOMES: Final = ("succeeded", "failed", "retried", "revoked", "rejected", "dead_lettered")
#: Histogram buckets, in seconds: tasks take milliseconds to minutes.
RUNTIME_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
QUEUE_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
_EVENT_OUTCOMES: Final = {f"task-{o.replace('_', '-')}": o for o in OUTCOMES}
_SENT_LIMIT: Final = 10_000  # task-sent times kept by feed() to measure queue waits


class TaskMetrics(NoEvents):
    """Counters and histograms of tasks, registered in ``registry``.

    Metrics (see docs/monitoring.md): ``asyncq_tasks_total{task,queue,outcome}``,
    ``asyncq_tasks_received_total{task,queue}``, ``asyncq_task_retries_total{task}``,
    ``asyncq_dead_lettered_total{queue}``, ``asyncq_task_limit_waits_total{task,limit}``,
    ``asyncq_task_runtime_seconds{task}`` and
    ``asyncq_task_queue_wait_seconds{queue}``; and the gauge ``asyncq_queue_length{queue}``
    (set by :meth:`set_queue_length`), with ``asyncq_fair_keys{queue}`` where the broker counts
    its fair-queuing tenants (:meth:`set_fair_keys`).
    """

    enabled = True

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.tasks = Counter(
            "asyncq_tasks", "Tasks finished, by outcome.", ["task", "queue", "outcome"], registry=registry
        )
        self.received = Counter(
            "asyncq_tasks_received",
            "Task messages taken from the broker.",
            ["task", "queue"],
            registry=registry,
        )
        self.retries = Counter("asyncq_task_retries", "Retries sent.", ["task"], registry=registry)
        self.dead_lettered = Counter(
            "asyncq_dead_lettered", "Messages moved to the dead-letter store.", ["queue"], registry=registry
        )
        self.limit_waits = Counter(
            "asyncq_task_limit_waits",
            "Messages held by a limit before they started (rate_limit, concurrency_key).",
            ["task", "limit"],
            registry=registry,
        )
        self.runtime = Histogram(
            "asyncq_task_runtime_seconds",
            "Seconds a task's function ran.",
            ["task"],
            buckets=RUNTIME_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "asyncq_task_queue_wait_seconds",
            "Seconds from a message being sent (or due, with an eta) to its task starting.",
            ["queue"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.queue_length = Gauge(
            "asyncq_queue_length",
            "Messages waiting in a queue (delayed ones included).",
            ["queue"],
            registry=registry,
        )
        self.fair_keys = Gauge(
            "asyncq_fair_keys",
            "Fair-queuing keys (tenants) of a queue with messages waiting for their turn.",
            ["queue"],
            registry=registry,
        )
        # Label lookups take a lock and build a tuple: cache the children the hot path uses.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._sent: OrderedDict[str, float] = OrderedDict()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_queue_length(self, queue: str, length: int) -> None:
        """Record a sampled queue length."""
        self._child(self.queue_length, queue).set(length)

    def set_fair_keys(self, queue: str, count: int) -> None:
        """Record a sampled count of fair keys waiting in ``queue``."""
        self._child(self.fair_keys, queue).set(count)

    def forget_queue(self, queue: str) -> None:
        """Stop reporting ``queue``'s length (no longer consumed)."""
        for gauge in (self.queue_length, self.fair_keys):
            self._children.pop((id(gauge), queue), None)
            with contextlib.suppress(KeyError):  # never sampled
                gauge.remove(queue)

    # -- the worker's hooks ----------------------------------------------------------------------

    def task_received(self, message: Message) -> None:
        self._child(self.received, message.task, message.queue).inc()

    def task_started(self, message: Message) -> None:
        sent = message.headers.get(SENT_AT)
        since = max(sent if isinstance(sent, float | int) else 0.0, message.eta or 0.0)
        if since:
            self._child(self.queue_wait, message.queue).observe(max(0.0, time.time() - since))

    def task_succeeded(self, message: Message, runtime: float) -> None:
        self._finished(message.task, message.queue, "succeeded", runtime)

    def task_failed(self, message: Message, exc: BaseException, runtime: float) -> None:
        self._finished(message.task, message.queue, "failed", runtime)

    def task_retried(self, message: Message, exc: BaseException | None, eta: float | None) -> None:
        self._child(self.tasks, message.task, message.queue, "retried").inc()
        self._child(self.retries, message.task).inc()

    def task_revoked(self, message: Message, reason: str) -> None:
        self._child(self.tasks, message.task, message.queue, "revoked").inc()

    def task_rejected(self, message: Message, reason: str, requeue: bool) -> None:
        self._child(self.tasks, message.task, message.queue, "rejected").inc()

    def task_dead_lettered(
        self, message: Message | None, reason: str, *, task_id: str = "", queue: str = ""
    ) -> None:
        name, queue = (message.task, message.queue) if message is not None else ("", queue)
        self._child(self.tasks, name, queue, "dead_lettered").inc()
        self._child(self.dead_lettered, queue).inc()

    def task_waiting(self, message: Message, limit: str, key: str | None, wait: float | None) -> None:
        self._child(self.limit_waits, message.task, limit).inc()

    def _finished(self, name: str, queue: str, outcome: str, runtime: float) -> None:
        self._child(self.tasks, name, queue, outcome).inc()
        if runtime > 0:  # 0: it gave up retrying, the run was counted as a retry
            self._child(self.runtime, name).observe(runtime)

    # -- events ------------------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> None:
        """Count one event dict of ``app.events.stream()`` (schema: docs/protocol.md).

        Queue waits are measured from a task's task-sent event (producers send them with
        ``task_send_sent_event``) to its task-started; the last 10,000 send times are kept.
        """
        kind = event.get("type")
        name = str(event.get("name") or "")
        queue = str(event.get("queue") or "")
        if kind == "task-received":
            self._child(self.received, name, queue).inc()
        elif kind == "task-sent":
            sent = self._sent
            sent[str(event.get("uuid"))] = float(event.get("timestamp") or time.time())
            if len(sent) > _SENT_LIMIT:
                sent.popitem(last=False)
        elif kind == "task-started":
            started = self._sent.pop(str(event.get("uuid")), None)
            if started is not None:
                wait = float(event.get("timestamp") or 0.0) - started
                self._child(self.queue_wait, queue).observe(max(0.0, wait))
        elif kind in _EVENT_OUTCOMES:
            outcome = _EVENT_OUTCOMES[kind]
            if outcome == "retried":
                self._child(self.retries, name).inc()
            elif outcome == "dead_lettered":
                self._child(self.dead_lettered, queue).inc()
            runtime = event.get("runtime")
            self._finished(name, queue, outcome, float(runtime) if isinstance(runtime, float | int) else 0.0)
