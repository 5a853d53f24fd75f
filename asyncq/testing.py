"""Helpers for testing code that uses asyncq: an in-memory app, drain(), and eager mode.

``await drain(app)`` runs everything queued on an app's ``memory://`` broker, in this loop, one
task at a time through the worker's own job path (so retries, expiry, chains, groups, chords
and callbacks behave as on a worker), until nothing is left to run; countdowns and retry
delays are skipped (``advance=``). It returns one :class:`Outcome` per task.

The pytest fixtures built on these live in :mod:`asyncq.contrib.pytest_plugin` (loaded by the
``pytest11`` entry point). Eager mode (``task_always_eager``) is the other way to test: tasks
run inline at ``delay`` / ``apply_async`` time (see docs/testing.md).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from asyncq._utils import now
from asyncq.brokers.memory import MemoryBroker, _Item, _MemoryDelivery
from asyncq.exceptions import ConfigurationError
from asyncq.flow.gate import FlowGate
from asyncq.message import decode_message
from asyncq.result import decode_record, exception_from_record
from asyncq.states import State
from asyncq.worker.executor import Executor
from asyncq.worker.job import JobRunner

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["DRAIN_LIMIT", "Outcome", "drain", "memory_app", "use_memory"]

#: Task runs one drain() makes before deciding the queues never empty (a task retrying forever?).
DRAIN_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task ended in a drain: its final state and result or exception.

    Attributes:
        id: the task id.
        task: the task's registered name.
        state: SUCCESS, FAILURE, REVOKED, or RETRY if its retry is still waiting (``advance``).
        result: the return value (None unless SUCCESS, or when results are ignored).
        exception: the exception, for FAILURE and REVOKED.
        runs: how many times it ran in this drain (retries included).
    """

    id: str
    task: str
    state: State
    result: Any = None
    exception: BaseException | None = None
    runs: int = 1

    @property
    def successful(self) -> bool:
        """True if the task succeeded."""
        return self.state == State.SUCCESS


def _memory_broker(app: App) -> MemoryBroker:
    broker = app.broker
    if not isinstance(broker, MemoryBroker):
        raise ConfigurationError(
            f"drain() runs a memory:// broker's queues, and app {app.main!r} uses {app.broker_url}; "
            "make the app with broker='memory://' (asyncq.testing.memory_app) or wrap the test in "
            "asyncq.testing.use_memory(app)"
        )
    return broker


def _promote(app: App, broker: MemoryBroker, horizon: float) -> None:
    """Make every delayed message due before ``horizon`` ready now: skipping ahead in time.

    The message loses its eta too, or the job path would hand it back as delivered early.
    """
    delayed = broker._delayed
    current = now()
    while delayed and delayed[0][0] <= horizon:
        _, _, item = heapq.heappop(delayed)
        if item.message.eta is not None and item.message.eta > current:
            message = replace(decode_message(item.message.body, app.serializers), eta=None)
            item = _Item(item.sort_key, app.outgoing(message), item.deliveries)
        broker._push_ready(item)


def _all_queues(broker: MemoryBroker) -> list[str]:
    names = dict.fromkeys(broker._ready)
    names.update(dict.fromkeys(entry[2].message.queue for entry in broker._delayed))
    return list(names)


async def drain(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    advance: bool | float = True,
    limit: int = DRAIN_LIMIT,
) -> list[Outcome]:
    """Run every task queued on ``app``'s memory broker, and what they start, until none is left.

    Args:
        queues: the queues to run (default: all of them).
        advance: True skips every countdown, eta and retry delay (they run now); a number of
            seconds skips only that far ahead of the drain's start; False runs only what is due.
        limit: the most task runs before giving up with an error (a task retrying forever).

    Returns:
        One Outcome per task id, in the order the tasks first ran.

    Raises:
        asyncq.exceptions.ConfigurationError: the app's broker is not memory://, or ``limit`` was hit.
    """
    await app.connect()
    broker = _memory_broker(app)
    if advance is True:
        horizon = math.inf
    elif advance is False:
        horizon = -math.inf
    else:
        horizon = now() + float(advance)
    executor = Executor()
    runner = JobRunner(
        app, executor, hostname="asyncq.testing", max_deliveries=app.conf.worker_max_deliveries
    )
    states: dict[str, State] = {}
    runs: dict[str, int] = {}
    names: dict[str, str] = {}
    current = [""]

    def record(task: str, state: State) -> None:
        states[current[0]], names[current[0]] = state, task

    runner.on_outcome = record
    runner.flow = FlowGate.for_app(app, hostname="asyncq.testing")  # memory://: limits in process
    await runner.flow.start()
    try:
        for _ in range(limit):
            _promote(app, broker, max(horizon, now()))
            item = broker._take(list(queues) if queues is not None else _all_queues(broker))
            if item is None:
                break
            item.deliveries += 1
            delivery = _MemoryDelivery(broker, item, None)  # one at a time: no prefetch window
            current[0] = delivery.id
            runs[delivery.id] = runs.get(delivery.id, 0) + 1
            await runner.handle(delivery)
        else:
            raise ConfigurationError(
                f"drain() ran {limit} tasks and the queues are still not empty: is a task retrying "
                "or re-enqueueing itself forever? (raise limit= if this is expected)"
            )
    finally:
        await runner.flow.aclose()
        await executor.aclose()
    return [
        await _outcome(app, task_id, names.get(task_id, ""), states.get(task_id), count)
        for task_id, count in runs.items()
    ]


async def _outcome(app: App, task_id: str, name: str, state: State | None, runs: int) -> Outcome:
    data = await app.backend.get(task_id)
    if data is None:  # ignore_result, or it never produced a record
        return Outcome(task_id, name, state or State.PENDING, runs=runs)
    record = decode_record(data, app.serializers)
    final = record.status if state is None or record.is_ready else state
    exception = exception_from_record(record) if record.status in (State.FAILURE, State.REVOKED) else None
    return Outcome(
        task_id,
        record.task or name,
        final,
        result=record.result if record.status == State.SUCCESS else None,
        exception=exception,
        runs=runs,
    )


def memory_app(main: str = "asyncq-test", **config: Any) -> App:
    """A new App on ``memory://`` (broker and results), with ``config`` settings applied."""
    from asyncq.app import App

    return App(main, broker="memory://", backend="memory://", config=config)


@contextmanager
def use_memory(app: App) -> Iterator[App]:
    """Point an existing app at fresh ``memory://`` drivers for the block, then restore it.

    For testing an app defined in your code base (``from myproject.tasks import app``)
    without its real broker: its tasks, routes and settings stay as they are.
    """
    saved = (app.conf.broker_url, app.conf.result_backend, app._drivers, app._shared_drivers)
    app.conf.broker_url = "memory://"
    app.conf.result_backend = "memory://"
    app._drivers = type(app._drivers)()
    app._shared_drivers = None
    try:
        yield app
    finally:
        app.conf.broker_url, app.conf.result_backend, app._drivers, app._shared_drivers = saved
