"""Worker: one event loop running many tasks at once, embedded or as a process.

``async with app.worker(...)`` runs it as background tasks of the current loop (e.g. a
FastAPI lifespan); ``app.worker(...).run()`` blocks (scripts, ``asyncq run``) and handles
SIGTERM/SIGINT: the first signal stops fetching and lets in-flight tasks finish within
``shutdown_timeout``, then cancels the rest and returns their messages to the queue (a
worker still connecting gives up the connect at once); a second signal does that at once,
whatever the worker waits for, and exits the process within a few seconds even if a sync
task's thread cannot be stopped (see :mod:`asyncq.runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import Coroutine, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

from asyncq._connect import is_unreachable
from asyncq._utils import describe_error, redact_url
from asyncq.exceptions import AsyncqError, ConfigurationError
from asyncq.flow.gate import FlowGate
from asyncq.outbox import Relay
from asyncq.runner import loop_factory, run_until_signalled
from asyncq.scheduler import Scheduler
from asyncq.states import State
from asyncq.worker.executor import Executor
from asyncq.worker.job import JobRunner
from asyncq.worker.observers import Observers
from asyncq.worker.presence import Presence

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.brokers import Delivery

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

#: The stats counter of each outcome (computed once, not per task).
_STAT_NAMES = {state: str(state).lower() for state in State}

#: The youngest generation's threshold while a worker has frozen its start-up heap (CPython's
#: default is 700). Each job lives across many allocations, so at 700 most young objects are
#: still alive at a collection and get walked again in every generation they reach; ten times
#: fewer collections walk far fewer of them (measured: about 6% fewer instructions per task).
_FROZEN_GEN0: Final = 7000

#: Seconds between attempts to resume consuming after the broker failed.
CONSUME_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
#: Pauses between start-up connect attempts (broker_connection_retry_on_startup), then the last.
STARTUP_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class _Slots(asyncio.Semaphore):
    """The concurrency semaphore, with a synchronous take for the consumer's every delivery."""

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits (acquire()'s fast path, minus a coroutine)."""
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        return False

    def release(self) -> None:
        """Semaphore.release(), with no call to wake a waiter when none waits (every job's end)."""
        self._value += 1
        if self._waiters:
            self._wake_up_next()


class Worker:
    """Consumes tasks from queues and runs them, up to ``concurrency`` at once.

    Args:
        app: the app whose tasks it runs.
        queues: queue names to consume (default: the app's default queue).
        concurrency: tasks running at once (``worker_concurrency``).
        prefetch: unacknowledged messages held at once (``worker_prefetch``, default
            ``concurrency``); never more, so idle workers are not starved.
        shutdown_timeout: seconds in-flight tasks get to finish when stopping.
        thread_pool_size / process_pool_size: sizes of the sync and process executors.
        max_deliveries: crashes of a redelivered (suspect) message while running isolated
            after which it is dead-lettered; see docs/worker.md.
        loop: event loop for :meth:`run`: auto, asyncio or uvloop.
        hostname: this worker's name in task records and logs (default ``host:pid``).
        beat: also run the periodic scheduler (:class:`~asyncq.scheduler.Scheduler`); safe
            on any number of workers, each tick is sent once.
        send_events: send task and worker events (``worker_send_task_events``; ``-E``).
        metrics_port: serve Prometheus metrics on this port (``worker_metrics_port``; 0: any
            free port, then in :attr:`metrics_port` once serving); see docs/monitoring.md.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        shutdown_timeout: float | None = None,
        thread_pool_size: int | None = None,
        process_pool_size: int | None = None,
        max_deliveries: int | None = None,
        loop: str | None = None,
        hostname: str | None = None,
        beat: bool = False,
        send_events: bool | None = None,
        metrics_port: int | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = int(concurrency or conf.worker_concurrency)
        # Messages waiting on a concurrency key hold prefetch but no slot: room for twice as
        # many keeps other keys flowing while some wait.
        keyed = any(task.concurrency is not None for task in app.tasks.values())
        self.prefetch = int(prefetch or conf.worker_prefetch or self.concurrency * (2 if keyed else 1))
        self.shutdown_timeout = float(
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.max_deliveries = int(max_deliveries or conf.worker_max_deliveries)
        self.loop = loop or conf.worker_loop
        self._owns_process = False  # set by run(): a worker that is the process may gc.freeze()
        self.hostname = hostname or f"{socket.gethostname()}:{os.getpid()}"
        self.send_events = bool(conf.worker_send_task_events if send_events is None else send_events)
        port = conf.worker_metrics_port if metrics_port is None else metrics_port
        self.metrics_port: int | None = None if port is None else int(port)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(f"metrics port must be 0-65535, got {self.metrics_port}")
        if self.concurrency < 1 or self.prefetch < 1:
            raise ConfigurationError("concurrency and prefetch must be at least 1")
        loop_factory(self.loop)  # validate early
        self.executor = Executor(thread_pool_size=thread_pool_size, process_pool_size=process_pool_size)
        self.stats: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._force = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots: _Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._off: set[asyncio.Task[Any]] = set()  # jobs waiting on a limit, their slot given back
        self._main: asyncio.Task[None] | None = None
        self._resubscribe = asyncio.Event()
        self.waiting: Delivery | None = None
        self._shrinking: set[asyncio.Task[bool]] = set()
        self.scheduler: Scheduler | None = Scheduler(app) if beat else None

    def __repr__(self) -> str:
        return f"<Worker {self.hostname} queues={self.queues} concurrency={self.concurrency}>"

    @property
    def in_flight(self) -> int:
        """Tasks running now."""
        return len(self._inflight)

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until :meth:`stop` is called, then shut down cleanly."""
        self._stop_requested = asyncio.Event()
        self._slots = _Slots(self.concurrency)
        self._loop = asyncio.get_running_loop()
        if not await self._connect_unless_stopped():
            return
        runner = JobRunner(
            self.app, self.executor, hostname=self.hostname, max_deliveries=self.max_deliveries
        )
        runner.on_outcome = self._count
        runner.on_finish = self._job_finished
        runner.slot_back = self._slots.release
        flow = FlowGate.for_app(self.app, hostname=self.hostname)  # a task no store can limit fails here
        await flow.start()
        runner.flow, runner.give_slot, runner.take_slot = flow, self._give_slot, self._take_slot
        try:
            await self._serve_with(runner)
        finally:
            await flow.aclose()

    async def _serve_with(self, runner: JobRunner) -> None:
        assert self._stop_requested is not None
        assert self._slots is not None
        emitter = await self.app.events.start_worker(self)
        observers = Observers()
        try:
            await observers.start(self, runner, emitter)  # metrics, tracing: when enabled
        except BaseException:
            await observers.aclose()
            await self.app.events.stop_worker(self, emitter)
            raise
        self.metrics_port = observers.metrics_port or self.metrics_port
        from asyncq.security import log_startup_warnings

        log_startup_warnings(self.app.conf, self.app.tasks.values())
        presence = Presence(self, runner)
        await presence.start()  # before consuming: a task revoked earlier must already be known
        runner.is_revoked = presence.is_revoked
        logger.info(
            "worker %s consuming %s, concurrency %d, broker %s, backend %s",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
            redact_url(self.app.broker_url),
            redact_url(self.app.backend_url),
        )
        consumer = asyncio.create_task(self._consume(runner), name="asyncq.consumer")
        stop_wait = asyncio.create_task(self._stop_requested.wait(), name="asyncq.stop-wait")
        heartbeat = asyncio.create_task(presence.serve(), name="asyncq.presence")
        loops = [consumer, stop_wait, heartbeat]
        if self.scheduler is not None:
            loops.append(asyncio.create_task(self.scheduler.serve(), name="asyncq.beat"))
        relay: Relay | None = None
        outbox = self.app.outbox
        if outbox is not None:  # every worker of the app relays its outbox (SKIP LOCKED shares it)
            relay = Relay(outbox, self.app.broker)
            loops.append(asyncio.create_task(relay.serve(), name="asyncq.relay"))
        celery_loop: asyncio.Task[None] | None = None
        if self.app.conf.celery_queues:  # Celery protocol queues, beside the broker's own
            from asyncq.celery.consumer import CeleryConsumer

            celery = CeleryConsumer(
                self.app,
                self.executor,
                slots=self._slots,
                adopt=self._adopt,
                hostname=self.hostname,
                flow=runner.flow,
                give_slot=self._give_slot,
                take_slot=self._take_slot,
                book=runner.book,
                is_revoked=runner.is_revoked,
            )
            celery_loop = asyncio.create_task(celery.serve(), name="asyncq.celery")
            loops.append(celery_loop)
        # What start-up left alive (modules, the app, connections) lives as long as the worker:
        # frozen, it is no longer walked by every full collection while tasks run.
        # auto: only a worker that owns its process, so an embedding app's objects stay collectable.
        freeze = self.app.conf.worker_gc_freeze
        frozen = self._owns_process if freeze == "auto" else bool(freeze)
        thresholds = gc.get_threshold()
        raised = frozen and thresholds[0] < _FROZEN_GEN0  # a higher one set by the user stays
        if frozen:
            gc.freeze()
            if raised:
                gc.set_threshold(_FROZEN_GEN0, *thresholds[1:])
        self.ready.set()
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop_task in done:
                loop_task.result()  # the consumer and the beat only end by failing: let it be loud
        finally:
            if self.scheduler is not None:
                self.scheduler.stop()  # not cancelled: it finishes the tick it may be sending
            stop_wait.cancel()
            consumer.cancel()
            heartbeat.cancel()
            if relay is not None:
                relay.stop()  # not cancelled: it deletes the batch it has published
            if celery_loop is not None:
                celery_loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._drain()
            await self.app.events.stop_worker(self, emitter)
            await observers.aclose()
            await self.executor.aclose()
            await presence.aclose()
            for shrink in self._shrinking:
                shrink.cancel()
            if raised and gc.get_threshold()[0] == _FROZEN_GEN0:  # not changed since (another worker)
                gc.set_threshold(*thresholds)
            if frozen:
                gc.unfreeze()
            self.ready.clear()
            logger.info("worker %s stopped: %s", self.hostname, dict(self.stats))

    async def _connect_unless_stopped(self) -> bool:
        """Connect the app's drivers; False if :meth:`stop` came first (the connect is abandoned).

        A server not reachable yet is tried again with growing pauses when
        ``broker_connection_retry_on_startup`` allows it (see :func:`is_unreachable`).
        """
        conf = self.app.conf
        setting = conf.broker_connection_retry_on_startup
        retry = self._owns_process if setting == "auto" else bool(setting)
        limit = conf.broker_connection_max_retries or None  # 0 or None: no limit
        retries = 0
        while True:
            try:
                if await self._until_stopped(self.app.connect()):
                    return True
                logger.info("worker %s stopped before it connected", self.hostname)
                return False
            except AsyncqError as exc:
                if not retry or not is_unreachable(exc) or (limit is not None and retries >= limit):
                    raise
                retries += 1
                delay = STARTUP_RETRY_DELAYS[min(retries, len(STARTUP_RETRY_DELAYS)) - 1]
                left = "" if limit is None else f" of {limit}"
                logger.warning("%s; trying again in %gs (retry %d%s)", exc, delay, retries, left)
            if not await self._until_stopped(asyncio.sleep(delay)):
                logger.info("worker %s stopped before it connected", self.hostname)
                return False

    async def _until_stopped(self, work: Coroutine[Any, Any, object]) -> bool:
        """Await ``work``; False, with ``work`` cancelled, if :meth:`stop` comes first."""
        assert self._stop_requested is not None
        task = asyncio.create_task(work, name="asyncq.connect")
        stop_wait = asyncio.create_task(self._stop_requested.wait(), name="asyncq.stop-wait")
        try:
            await asyncio.wait((task, stop_wait), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            return False
        task.result()  # a failure is raised here
        return True

    async def _consume(self, runner: JobRunner) -> None:
        # Consumes in an inner task, started again whenever set_queues() changes the queues.
        while True:
            self._resubscribe.clear()
            inner = asyncio.create_task(self._consume_queues(runner), name="asyncq.consume")
            change = asyncio.create_task(self._resubscribe.wait(), name="asyncq.resubscribe")
            try:
                await asyncio.wait({inner, change}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
                inner.cancel()
                await asyncio.gather(inner, change, return_exceptions=True)
            if not inner.cancelled() and inner.exception() is not None:
                inner.result()

    async def _consume_queues(self, runner: JobRunner) -> None:
        assert self._slots is not None
        slots = self._slots
        start_job = asyncio.get_running_loop().create_task
        failures = 0
        while True:
            try:
                async with aclosing(
                    self.app.broker.consume(list(self.queues), prefetch=self.prefetch)
                ) as deliveries:
                    async for delivery in deliveries:
                        failures = 0
                        self.waiting = delivery  # taken, waiting for a slot: inspect().reserved()
                        try:
                            if not slots.take_now():
                                await slots.acquire()
                        except asyncio.CancelledError:
                            # Taken but never started: hand it back now, not after its lease.
                            with contextlib.suppress(AsyncqError):
                                await asyncio.shield(delivery.nack())
                            raise
                        finally:
                            self.waiting = None
                        # No done callback: handle() frees the slot as it ends (on_finish), one
                        # loop callback less per task; _cancel() covers a job cancelled unstarted.
                        job = start_job(runner.handle(delivery), name=f"asyncq.job.{delivery.id}")
                        self._inflight.add(job)
            except AsyncqError as exc:
                # Drivers reconnect on their own; this is the last line of defence against a
                # consumer that stops silently after a broker outage.
                delay = CONSUME_RETRY_DELAYS[min(failures, len(CONSUME_RETRY_DELAYS) - 1)]
                failures += 1
                logger.error("consuming failed (%s); resuming in %.1fs", describe_error(exc), delay)
                await asyncio.sleep(delay)

    def set_queues(self, queues: Sequence[str]) -> None:
        """Consume ``queues`` from now on (tasks already taken still finish)."""
        if not queues:
            raise ConfigurationError("a worker needs at least one queue")
        self.queues = list(dict.fromkeys(queues))
        self._resubscribe.set()

    def resize(self, concurrency: int) -> None:
        """Run up to ``concurrency`` tasks at once from now on (running ones are not stopped)."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        delta, self.concurrency = concurrency - self.concurrency, concurrency
        slots = self._slots
        if slots is None:
            return
        for _ in range(max(0, delta)):
            slots.release()
        for _ in range(max(0, -delta)):  # take slots away as running tasks give them back
            shrink = asyncio.create_task(slots.acquire(), name="asyncq.pool-shrink")
            self._shrinking.add(shrink)
            shrink.add_done_callback(self._shrinking.discard)

    def cancel_job(self, task_id: str) -> bool:
        """Cancel the job of ``task_id`` if it is in flight here (the runner settles its message)."""
        for job in self._inflight:
            if job.get_name() == f"asyncq.job.{task_id}":
                self._cancel(job)
                return True
        return False

    def _give_slot(self) -> bool:
        """Give the running job's concurrency slot back while it waits on a limit; False if it has none."""
        slots, job = self._slots, asyncio.current_task()
        if slots is None or job not in self._inflight or job in self._off:
            return False
        slots.release()
        self._off.add(job)  # until it has a slot again, _job_done must not release one
        return True

    async def _take_slot(self) -> None:
        """Take a concurrency slot again for the job that gave its own back."""
        assert self._slots is not None
        await self._slots.acquire()
        self._off.discard(asyncio.current_task())

    def _adopt(self, job: asyncio.Task[None]) -> None:
        """Track a job started outside the broker's consumer (it holds a slot until it ends)."""
        self._inflight.add(job)
        job.add_done_callback(self._job_done)

    def _job_finished(self, kept: bool = False) -> None:
        """The runner's last step in a job's task: forget the job, free its slot.

        ``kept``: a flush in flight holds the slot and gives it back (the runner's slot_back).
        """
        job = asyncio.current_task(self._loop)
        self._inflight.discard(job)
        if self._off and job in self._off:
            self._off.discard(job)  # it gave its slot back while waiting on a limit
        elif self._slots is not None and not kept:
            self._slots.release()

    def _cancel(self, job: asyncio.Task[None]) -> None:
        # A job cancelled before its first step never runs handle(), so never reaches on_finish.
        job.cancel()
        job.add_done_callback(self._reap)

    def _reap(self, job: asyncio.Task[None]) -> None:
        if job in self._inflight:
            self._job_done(job)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self._inflight.discard(job)
        if job in self._off:
            self._off.discard(job)
        elif self._slots is not None:
            self._slots.release()
        if not job.cancelled() and job.exception() is not None:
            logger.error("job crashed", exc_info=job.exception())

    def _count(self, task_name: str, state: State) -> None:
        self.stats[_STAT_NAMES[state]] += 1

    async def _drain(self) -> None:
        """Let in-flight tasks finish within the grace period, then cancel (and requeue) the rest."""
        if not self._inflight:
            return
        grace = 0.0 if self._force else self.shutdown_timeout
        logger.info("waiting up to %.1fs for %d in-flight tasks", grace, len(self._inflight))
        if grace > 0:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        else:
            pending = set(self._inflight)
        if pending:
            logger.warning(
                "cancelling %d unfinished tasks; their messages go back to the queue", len(pending)
            )
            for job in pending:
                self._cancel(job)
            await asyncio.gather(*pending, return_exceptions=True)

    def stop(self, *, graceful: bool = True) -> None:
        """Ask the worker to stop; ``graceful=False`` (or a second call) skips the grace period."""
        if self._stop_requested is None:
            return
        if self._stop_requested.is_set() or not graceful:
            self._force = True
            for job in list(self._inflight):
                self._cancel(job)
        self._stop_requested.set()

    # -- embedding ----------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        self._main = asyncio.create_task(self.serve(), name="asyncq.worker")
        ready = asyncio.create_task(self.ready.wait(), name="asyncq.worker-ready")
        done, _ = await asyncio.wait({self._main, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self._main in done:
            ready.cancel()
            self._main.result()  # serve() failed to start: raise its error here
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._main is not None:
            await self._main

    # -- as a process -------------------------------------------------------------------------

    def run(self) -> None:
        """Run in a fresh event loop until SIGTERM/SIGINT (a second signal stops at once)."""

        def on_signal(signum: int) -> None:
            forced = self._stop_requested is not None and self._stop_requested.is_set()
            action = "stopping now" if forced else "stopping gracefully"
            logger.warning("%s received: %s", signal.Signals(signum).name, action)
            self.stop()

        self._owns_process = True
        run_until_signalled(self.app, self.serve, on_signal, loop=self.loop)

    def __getstate__(self) -> Any:  # pragma: no cover - guard against accidental pickling
        raise TypeError("a Worker cannot be pickled")
