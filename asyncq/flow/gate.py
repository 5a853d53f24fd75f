"""The worker side of flow control: hold a message until its limits let it start.

A message whose task has a limit waits here *before* it runs, off the worker's concurrency
slots (the runner gives its slot back while it waits) but still unsettled, so a worker that
dies meanwhile loses nothing: the broker delivers the message again.

* Global rate limits book their starts in the store (GCRA, :mod:`asyncq.flow.gcra`): the
  requests of one loop iteration go in one round trip, each learns its wait and sleeps it
  once, nothing polls. ``rate_limit_scope="worker"`` keeps a bucket in this worker instead.
* Concurrency keys take a slot with a lease, renewed while the task runs. A full key's
  waiters queue here in arrival order; one loop asks the store again when a slot of that key
  is freed in this worker (at once) or every ``flow_poll_interval`` (slots freed elsewhere).
  Other keys are not held up: each key has its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from asyncq.exceptions import AsyncqError, ConfigurationError
from asyncq.flow.bucket import RateLimiter
from asyncq.flow.store import LimitStore, limit_store_for

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.task import Task

__all__ = ["Call", "FlowGate", "Permit"]

logger = logging.getLogger(__name__)


class Call(Protocol):
    """What the limits read of a message: asyncq's :class:`~asyncq.message.Message` or Celery's."""

    @property
    def id(self) -> str: ...
    @property
    def args(self) -> Sequence[Any]: ...
    @property
    def kwargs(self) -> Mapping[str, Any]: ...


_C = TypeVar("_C", bound=Call)

#: Told of a message a limit holds: (message, "rate_limit" | "concurrency_key", key, wait).
OnWait = Callable[[_C, str, "str | None", "float | None"], None]


@dataclass(slots=True)
class Permit:
    """What a started message holds: a concurrency slot to give back when it finishes."""

    key: str | None = None
    holder: str = ""


@dataclass(slots=True)
class _Waiter:
    holder: str
    limit: int
    future: asyncio.Future[None] = field(repr=False)


class FlowGate:
    """Limits of one worker's tasks: waits for rate tokens and concurrency slots."""

    def __init__(
        self,
        store: LimitStore | None,
        *,
        hostname: str,
        lease: float,
        poll_interval: float,
        default_scope: str,
    ) -> None:
        self.store = store
        self.hostname = hostname
        self.lease = lease
        self.poll_interval = poll_interval
        self.default_scope = default_scope
        self._local: dict[str, RateLimiter] = {}  # rate_limit_scope="worker": a bucket per task
        self._batches: dict[str, list[asyncio.Future[float]]] = {}  # rate key -> requests of this tick
        self._waiters: dict[str, deque[_Waiter]] = {}  # concurrency key -> queue, arrival order
        self._held: dict[str, set[str]] = {}  # concurrency key -> holders here
        self._labels: dict[str, tuple[str, str]] = {}  # concurrency key -> (task, key value)
        self._rate_waiting: Counter[str] = Counter()  # task -> messages waiting for a token
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._loop_task: asyncio.Task[None] | None = None

    @classmethod
    def for_app(cls, app: App, *, hostname: str) -> FlowGate:
        """The gate of a worker of ``app``; a ConfigurationError if a task needs a store there is none of."""
        conf = app.conf
        scope = str(conf.task_default_rate_limit_scope)
        if scope not in ("global", "worker"):
            raise ConfigurationError(
                f"task_default_rate_limit_scope must be 'global' or 'worker', not {scope!r}"
            )
        for name in ("flow_lease", "flow_poll_interval"):
            if not float(getattr(conf, name)) > 0:
                raise ConfigurationError(f"{name} must be positive, not {getattr(conf, name)!r}")
        gate = cls(
            None,
            hostname=hostname,
            lease=float(conf.flow_lease),
            poll_interval=float(conf.flow_poll_interval),
            default_scope=scope,
        )
        needing = [task for task in app.tasks.values() if gate._needs_store(task)]
        if needing:
            gate.store = limit_store_for(app.broker, app.backend)
            if gate.store is None:
                raise ConfigurationError(_no_store(needing[0], app))
        return gate

    def _is_global(self, task: Task[Any, Any]) -> bool:
        return (task.options.rate_limit_scope or self.default_scope) == "global"

    def _needs_store(self, task: Task[Any, Any]) -> bool:
        return task.concurrency is not None or (task.rate is not None and self._is_global(task))

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the store and start the loop that grants slots and renews their leases."""
        if self.store is None:
            return
        await self.store.connect()
        self._loop_task = asyncio.create_task(self._serve(), name="asyncq.flow")

    async def aclose(self) -> None:
        """Stop the loop, give back the slots still held here, close the store."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self.store is None:
            return
        try:
            for key, holders in list(self._held.items()):
                await self.store.release(key, list(holders))
        except Exception:  # their leases run out on their own
            logger.warning("could not give back %d concurrency slots at shutdown", len(self._held))
        finally:
            self._held.clear()
            await self.store.aclose()

    # -- admission -------------------------------------------------------------------------------

    def limits(self, task: Task[Any, Any]) -> bool:
        """Whether ``task`` has a limit to wait for."""
        return task.rate is not None or task.concurrency is not None

    def key_of(self, task: Task[Any, Any], message: Call) -> str | None:
        """The concurrency key of ``message`` (None: no key); raises what the key function raises."""
        concurrency = task.concurrency
        return None if concurrency is None else concurrency.key(task.name, message.args, message.kwargs)

    async def admit(
        self, task: Task[Any, Any], message: _C, key: str | None, on_wait: OnWait[_C] | None = None
    ) -> Permit:
        """Wait until ``message`` may start; the :class:`Permit` goes to :meth:`release` afterwards.

        ``on_wait(message, limit, key, wait)`` hears of each limit that holds it, just before it
        waits (from the caller's task): the runner gives its worker slot back then, and sends
        the event.
        """
        permit = Permit()
        concurrency = task.concurrency
        if concurrency is not None and key is not None:
            if self.store is None:
                raise ConfigurationError(f"task {task.name!r} has max_concurrency but no limit store")
            holder = f"{self.hostname}/{message.id}/{next(self._ids)}"
            await self._take_slot(key, concurrency.limit, holder, task.name, message, on_wait)
            permit.key, permit.holder = key, holder
        try:
            if task.rate is not None:
                await self._wait_rate(task, message, on_wait)
        except BaseException:
            await asyncio.shield(self.release(permit))
            raise
        return permit

    async def release(self, permit: Permit) -> None:
        """Give back what ``permit`` holds (a slot), waking this worker's waiters of its key."""
        key = permit.key
        if key is None:
            return
        permit.key = None
        held = self._held.get(key)
        if held is not None:
            held.discard(permit.holder)
            if not held:
                del self._held[key]
        if key in self._waiters:
            self._dirty.add(key)
            self._wake.set()
        else:
            self._forget_label(key)
        assert self.store is not None
        try:
            await self.store.release(key, [permit.holder])
        except AsyncqError as exc:  # no longer renewed here: the slot comes back after its lease
            logger.warning("flow control: could not give back a slot of %r (%s)", key, exc)

    def reset_rate(self, task_name: str) -> None:
        """Forget the per-worker bucket of ``task_name`` (its rate changed)."""
        self._local.pop(task_name, None)

    async def _wait_rate(self, task: Task[Any, Any], message: _C, on_wait: OnWait[_C] | None) -> None:
        rate = task.rate
        assert rate is not None
        self._rate_waiting[task.name] += 1
        try:
            if self.store is None or not self._is_global(task):
                limiter = self._local.get(task.name)
                if limiter is None or limiter.rate != rate:
                    limiter = self._local[task.name] = RateLimiter(rate)
                if on_wait is None:
                    await limiter.acquire()
                else:
                    await limiter.acquire(lambda wait: on_wait(message, "rate_limit", None, wait))
                return
            wait = await self._book(task.name, 1.0 / rate)
            if wait > 0:
                if on_wait is not None:
                    on_wait(message, "rate_limit", None, wait)
                await asyncio.sleep(wait)
        finally:
            self._rate_waiting[task.name] -= 1
            if not self._rate_waiting[task.name]:
                del self._rate_waiting[task.name]

    async def _book(self, key: str, interval: float) -> float:
        """Book one start of ``key``; the requests of one loop iteration share a round trip."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = []
            asyncio.get_running_loop().call_soon(self._flush_batch, key, interval)
        batch.append(future)
        return await future

    def _flush_batch(self, key: str, interval: float) -> None:
        batch = self._batches.pop(key)
        flush = asyncio.create_task(self._send_batch(key, interval, batch), name="asyncq.flow.rate")
        flush.add_done_callback(lambda _: None)  # outcomes go to the futures

    async def _send_batch(self, key: str, interval: float, batch: list[asyncio.Future[float]]) -> None:
        assert self.store is not None
        try:
            waits = await self.store.reserve(key, interval, len(batch), 1)
        except BaseException as exc:
            for future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for future, wait in zip(batch, waits, strict=True):
            if not future.done():
                future.set_result(wait)

    async def _take_slot(
        self, key: str, limit: int, holder: str, task_name: str, message: _C, on_wait: OnWait[_C] | None
    ) -> None:
        assert self.store is not None
        label = self._labels.setdefault(key, (task_name, key[len(task_name) + 1 :]))
        # Nobody queued here before it: ask at once.
        if key not in self._waiters and holder in await self.store.acquire(key, limit, [holder], self.lease):
            self._held.setdefault(key, set()).add(holder)
            return
        if on_wait is not None:
            on_wait(message, "concurrency_key", label[1], None)
        waiter = _Waiter(holder, limit, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(key, deque()).append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            queue = self._waiters.get(key)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self._waiters[key]
            if waiter.future.done() and not waiter.future.cancelled():  # granted as it was cancelled
                await asyncio.shield(self.release(Permit(key, holder)))
            raise

    # -- the loop ----------------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self.lease / 3
        next_renew = loop.time() + renew_every
        next_poll = loop.time() + self.poll_interval
        while True:
            timeout = max(0.0, min(next_renew, next_poll if self._waiters else next_renew) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            current = loop.time()
            if current >= next_poll:  # slots freed in other workers are seen by looking
                keys, next_poll = list(self._waiters), current + self.poll_interval
            else:
                keys = [key for key in self._dirty if key in self._waiters]
            self._dirty.clear()
            try:
                for key in keys:
                    await self._grant(key)
                if current >= next_renew and self.store is not None:
                    next_renew = current + renew_every
                    await self.store.renew({k: list(v) for k, v in self._held.items()}, self.lease)
            except Exception as exc:  # the store is away: keep waiting, try again at the next poll
                logger.warning("flow control: the limit store failed (%s); trying again", exc)

    async def _grant(self, key: str) -> None:
        queue = self._waiters.get(key)
        if not queue:
            return
        assert self.store is not None
        asked = [waiter for waiter in queue if not waiter.future.done()]
        given = set(await self.store.acquire(key, asked[0].limit, [w.holder for w in asked], self.lease))
        if not given:
            return
        cancelled = []
        for waiter in asked:
            if waiter.holder not in given:
                continue
            if waiter in queue:  # a waiter cancelled while the store answered has left already
                queue.remove(waiter)
            if waiter.future.done():  # cancelled meanwhile: not held after all
                cancelled.append(waiter.holder)
                continue
            self._held.setdefault(key, set()).add(waiter.holder)
            waiter.future.set_result(None)
        if not queue and self._waiters.get(key) is queue:
            del self._waiters[key]
        if cancelled:
            await self.store.release(key, cancelled)

    # -- visibility ------------------------------------------------------------------------------

    def _forget_label(self, key: str) -> None:
        if key not in self._held and key not in self._waiters:
            self._labels.pop(key, None)

    def snapshot(self, tasks: Mapping[str, Task[Any, Any]]) -> dict[str, Any]:
        """The limits of ``tasks`` and their state in this worker, for ``inspect stats``."""
        rates = {
            task.name: {
                "rate_limit": task.options.rate_limit,
                "scope": "global" if self._is_global(task) else "worker",
                "waiting": self._rate_waiting.get(task.name, 0),
            }
            for task in tasks.values()
            if task.rate is not None
        }
        keys: dict[str, Any] = {
            task.name: {
                "max_concurrency": task.concurrency.limit,
                "key": task.concurrency.described,
                "running": {},
                "waiting": {},
            }
            for task in tasks.values()
            if task.concurrency is not None
        }
        for key, holders in self._held.items():
            name, value = self._labels.get(key, (key, ""))
            if name in keys:
                keys[name]["running"][value] = len(holders)
        for key, queue in self._waiters.items():
            name, value = self._labels.get(key, (key, ""))
            if name in keys:
                keys[name]["waiting"][value] = len(queue)
        return {"rate_limits": rates, "concurrency": keys}


def _no_store(task: Task[Any, Any], app: App) -> str:
    what = (
        f"max_concurrency={task.concurrency.limit}"
        if task.concurrency is not None
        else f"rate_limit={task.options.rate_limit!r} (global)"
    )
    broker = app.broker.url.partition(":")[0]
    backend = app.backend.url.partition(":")[0]
    return (
        f"task {task.name!r} has {what}, but neither the {broker}:// broker nor the {backend}:// "
        "backend keeps shared limit state; use a redis://, postgresql:// or sqlite:// broker or backend"
        + (", or rate_limit_scope='worker'" if task.concurrency is None else "")
    )
