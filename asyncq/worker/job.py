"""One message's path through a worker: decode -> resolve -> execute -> record -> settle.

Every outcome settles the delivery exactly once. A message that cannot be processed
(undecodable, unknown task, poison) goes to the dead-letter store with the reason, and its
task record says why, so a caller waiting on it is not left hanging.

Poison messages: a message delivered again (``delivery_count > 1``) is a *suspect*, since
its worker may have died of it or of another message it held. A suspect runs isolated (see
:mod:`asyncq.worker.quarantine`), and only crashes while isolated count towards
``max_deliveries``; so a message that kills workers is dead-lettered once, and the healthy
messages that were in flight with it simply run again. A suspect whose record is already
SUCCESS is acknowledged without running, and a stored SUCCESS is never replaced by a failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asyncq._utils import describe_error, now
from asyncq.brokers import Delivery
from asyncq.events import NO_EVENTS, NoEvents
from asyncq.exceptions import (
    AsyncqError,
    NotRegistered,
    Reject,
    Retry,
    SerializationError,
    SignatureError,
    TaskRevokedError,
    WorkerLostError,
)
from asyncq.message import Message
from asyncq.result import decode_record, encode_record
from asyncq.states import State
from asyncq.task import Request, Task
from asyncq.worker.procpool import ProcessLostError
from asyncq.worker.quarantine import SandboxImportError, sandbox_ref
from asyncq.worker.tracking import JobBook

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.worker.executor import Executor

__all__ = ["JobRunner", "RateLimiter"]

logger = logging.getLogger(__name__)

#: A message delivered more than ``max_deliveries * BACKSTOP_FACTOR`` times is dead-lettered
#: even if it never crashed while isolated: the last resort against a redelivery loop.
BACKSTOP_FACTOR = 20
#: Seconds a message's counters (isolated crashes, deliberate returns) live in the result
#: backend when results never expire.
COUNTER_TTL = 7 * 24 * 3600.0


class _Poison(Exception):
    """Raised inside the runner when a suspect has crashed isolated too often."""


class _AlreadyDeadLettered(Exception):
    """Raised inside the runner for a copy of a message already dead-lettered as poison."""


class RateLimiter:
    """A per-task token bucket: at most ``rate`` starts per second in this worker."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until the task may start."""
        async with self._lock:  # FIFO: waiters start in arrival order
            current = time.monotonic()
            self._tokens = min(1.0, self._tokens + (current - self._updated) * self.rate)
            self._updated = current
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._updated = time.monotonic()
                self._tokens = 1.0
            self._tokens -= 1.0


class JobRunner:
    """Runs deliveries for one worker."""

    def __init__(self, app: App, executor: Executor, *, hostname: str, max_deliveries: int) -> None:
        self.app = app
        self.executor = executor
        self.hostname = hostname
        self.max_deliveries = max_deliveries
        self.backstop = max_deliveries * BACKSTOP_FACTOR
        self._limiters: dict[str, RateLimiter] = {}
        self._result_ttl: float | None = app.conf.result_expires
        self._counter_ttl = self._result_ttl or COUNTER_TTL
        self._acks_late_default = bool(app.conf.task_acks_late)
        self._track_started_default = bool(app.conf.task_track_started)
        self._default_limits = (app.conf.task_soft_time_limit, app.conf.task_time_limit)
        # Resolved once: the runner lives on one loop, and these are read for every task.
        self._serializers = app.serializers
        self._security = app.security
        self._result_serializer = app.conf.result_serializer
        self._broker = app.broker
        self._backend = app.backend
        caps = self._backend.capabilities
        # rpc:// keeps no readable state (and a get() there subscribes to the id): skip reading.
        self._reads_records = caps.shared or caps.counters
        self.on_outcome: Callable[[str, State], None] | None = None  # stats hook for the worker
        self.events: NoEvents = NO_EVENTS  # the worker sets live hooks when it sends events
        self.book = JobBook()  # taken and running tasks, for inspect and revoke
        self.is_revoked: Callable[[str], bool] | None = None  # the worker's revocation check

    # -- the path -----------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery to the end; never raises except on cancellation."""
        message: Message | None = None
        try:
            message = await self._decode(delivery)
            if message is None:
                return
            self.events.task_received(message)
            self.book.reserve(message, delivery.queue)
            task = await self._resolve(delivery, message)
            if task is None:
                return
            await self._execute(delivery, message, task)
        except asyncio.CancelledError:
            entry = self.book.entries.get(delivery.id)
            if entry is not None and self.is_revoked is not None and self.is_revoked(delivery.id):
                # Revoked with terminate: settled here, so that no other worker starts it.
                await asyncio.shield(self._skip_revoked(delivery, entry.message, "revoked while running"))
                raise
            # Shutdown cut the task short: give the message back so another worker runs it.
            await asyncio.shield(self._give_back(delivery, message))
            raise
        except Exception:  # a bug in this path must not kill the worker; the message comes back
            logger.exception("internal error handling message %s; returning it to the queue", delivery.id)
            await self._give_back(delivery, message, delay=1.0)
        finally:
            self.book.finish(delivery.id)

    async def _decode(self, delivery: Delivery) -> Message | None:
        try:
            return self._security.open_incoming(delivery.body, self._serializers)
        except SignatureError as exc:
            # No result record: an unauthenticated message's id must not overwrite a real task's result.
            logger.error("dead-lettering message %s: %s", delivery.id, exc)
            await self._settle(delivery.dead_letter(str(exc)))
            return None
        except SerializationError as exc:
            reason = f"undecodable message: {exc}"
            logger.error("dead-lettering message %s: %s", delivery.id, reason)
            if self._security.verifier is None:  # with signing on, an id not yet verified is not trusted
                await self._record_failure(delivery.id, None, exc)
            self.events.task_dead_lettered(None, reason, task_id=delivery.id, queue=delivery.queue)
            await self._settle(delivery.dead_letter(reason))
            return None

    async def _resolve(self, delivery: Delivery, message: Message) -> Task[Any, Any] | None:
        if delivery.delivery_count > self.backstop:
            reason = (
                f"delivered {delivery.delivery_count} times without finishing "
                f"(backstop {self.backstop} = max_deliveries x {BACKSTOP_FACTOR}); its workers keep dying"
            )
            await self._dead_letter(delivery, message, reason, WorkerLostError(reason))
            return None
        task = self.app.tasks.get(message.task)
        if task is None:
            reason = f"unknown task {message.task!r}: not registered in app {self.app.main!r}"
            await self._dead_letter(delivery, message, reason, NotRegistered(reason))
            return None
        if self.is_revoked is not None and self.is_revoked(message.id):
            await self._skip_revoked(delivery, message, "revoked before it ran")
            return None
        if message.expires is not None and now() > message.expires:
            expired_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(message.expires))
            await self._skip_revoked(delivery, message, f"expired at {expired_at} before it ran")
            return None
        if message.eta is not None and message.eta > now() + 0.01:
            # Delivered early (a broker without native delays): hand it back until it is due.
            await self._give_back(delivery, message, delay=message.eta - now())
            return None
        return task

    async def _skip_revoked(self, delivery: Delivery, message: Message, reason: str) -> None:
        """Settle a task that must not run (revoked or expired): REVOKED, and its workflow fails."""
        logger.info("task %s[%s] %s", message.task, message.id, reason)
        self.events.task_revoked(message, reason)
        revoked = TaskRevokedError(reason)
        await self._store(message, State.REVOKED, exc=revoked)
        await self._follow_up(message, State.REVOKED, None, revoked)
        await self._settle(delivery.ack())

    async def _execute(self, delivery: Delivery, message: Message, task: Task[Any, Any]) -> None:
        options = task.options
        suspect = await self._is_suspect(delivery, message)
        if suspect and await self._already_succeeded(message):
            # At-least-once is met: it ran to the end once. Running it again could only turn a
            # stored success into a failure.
            logger.info(
                "task %s[%s] already succeeded; acknowledging delivery %d without running it",
                message.task,
                message.id,
                delivery.delivery_count,
            )
            await self._settle(delivery.ack())
            return
        acks_late = self._acks_late_default if options.acks_late is None else options.acks_late
        if not acks_late:
            await self._settle(delivery.ack())  # at-most-once: a crash from here on loses the task
        if task.rate is not None:
            limiter = self._limiters.get(task.name)
            if limiter is None:
                limiter = self._limiters[task.name] = RateLimiter(task.rate)
            await limiter.acquire()
        request = self._request(delivery, message)
        self.book.start(message.id, request)
        track = self._track_started_default if options.track_started is None else options.track_started
        if track:
            await self._store(message, State.STARTED, meta={"hostname": self.hostname, "pid": _pid()})
        soft = options.soft_time_limit if options.soft_time_limit is not None else self._default_limits[0]
        hard = options.time_limit if options.time_limit is not None else self._default_limits[1]
        started = time.perf_counter()
        self.events.task_started(message)
        try:
            if suspect:
                result = await self._run_suspect(delivery, message, task, request, soft, hard)
            else:
                result = await self._run(task, request, soft, hard)
        except _Poison as poison:
            if await self._claim_dead_letter(message):
                await self._dead_letter(delivery, message, str(poison), WorkerLostError(str(poison)))
            else:  # another copy of it, run at the same time, was dead-lettered
                logger.warning(
                    "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
                )
                await self._settle(delivery.ack())
            return
        except _AlreadyDeadLettered:
            logger.warning(
                "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
            )
            await self._settle(delivery.ack())
            return
        except Retry as retry:
            await self._retry(message, task, retry.exc, retry.when)
        except Reject as reject:
            self.events.task_rejected(message, reject.reason, reject.requeue)
            if reject.requeue:
                await self._give_back(delivery, message)
            else:
                await self._dead_letter(delivery, message, f"rejected by task: {reject.reason}", reject)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if options.autoretry_for and isinstance(exc, options.autoretry_for):
                await self._retry(message, task, exc, None)
            else:
                logger.warning(
                    "task %s[%s] failed in %.3fs: %r",
                    task.name,
                    message.id,
                    time.perf_counter() - started,
                    exc,
                )
                self.events.task_failed(message, exc, time.perf_counter() - started)
                self._outcome(message, State.FAILURE)
                if await self._store(message, State.FAILURE, exc=exc):
                    await self._follow_up(message, State.FAILURE, None, exc)
        else:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "task %s[%s] succeeded in %.3fs", task.name, message.id, time.perf_counter() - started
                )
            if not message.ignore_result:
                await self._store(message, State.SUCCESS, result=result)
            self.events.task_succeeded(message, time.perf_counter() - started)
            self._outcome(message, State.SUCCESS)
            await self._follow_up(message, State.SUCCESS, result, None)
        if acks_late:
            await self._settle(delivery.ack())

    async def _retry(
        self, message: Message, task: Task[Any, Any], exc: BaseException | None, when: float | None
    ) -> None:
        limit = task.max_retries
        if limit is not None and message.retries >= limit:
            failure = exc if exc is not None else AsyncqError(f"max_retries={limit} exceeded")
            logger.warning(
                "task %s[%s] gave up after %d retries: %r", task.name, message.id, message.retries, failure
            )
            self.events.task_failed(message, failure, 0.0)
            self._outcome(message, State.FAILURE)
            if await self._store(message, State.FAILURE, exc=failure):
                await self._follow_up(message, State.FAILURE, None, failure)
            return
        delay = task.retry_delay(message.retries) if when is None else when
        again = replace(message, retries=message.retries + 1, eta=now() + delay if delay > 0 else None)
        self.events.task_retried(message, exc, again.eta)  # before the next attempt's
        # Publish the next attempt before acking this one: a crash in between duplicates, never loses.
        await self._broker.publish(self.app.outgoing(again))
        logger.info("task %s[%s] retry %d in %.2fs: %r", task.name, message.id, again.retries, delay, exc)
        await self._store(message, State.RETRY, exc=exc, retries=again.retries, meta={"eta": again.eta})
        self._outcome(message, State.RETRY)

    async def _dead_letter(
        self, delivery: Delivery, message: Message, reason: str, exc: BaseException
    ) -> None:
        """Park a message that cannot run; tell its caller and its workflow why."""
        logger.error("dead-lettering %s[%s]: %s", message.task, message.id, reason)
        self.events.task_dead_lettered(message, reason)
        if await self._store(message, State.FAILURE, exc=exc):
            await self._follow_up(message, State.FAILURE, None, exc)
        await self._settle(delivery.dead_letter(reason))

    async def _follow_up(
        self, message: Message, state: State, result: Any, exc: BaseException | None
    ) -> None:
        """Run what the message's canvas slots ask for next (callbacks, chain, chord join)."""
        if not (message.callbacks or message.errbacks or message.chain or message.chord):
            return
        from asyncq.canvas import on_task_finished  # canvas sits beside the worker, not below it

        try:
            await on_task_finished(self.app, message, state, result, exc)
        except Exception:  # the task itself is done; a broken follow-up must not undo that
            logger.exception("could not start the follow-up of task %s[%s]", message.task, message.id)

    # -- running: ordinary tasks and suspects -----------------------------------------------------

    async def _run(
        self, task: Task[Any, Any], request: Request, soft: float | None, hard: float | None
    ) -> Any:
        gate = self.executor.gate
        if gate.is_open:
            gate.enter_open()
        else:
            await gate.enter()  # a suspect is running alone in this worker: wait for it
        try:
            return await self.executor.run(task, request, soft_time_limit=soft, time_limit=hard)
        finally:
            gate.leave()

    async def _run_suspect(
        self,
        delivery: Delivery,
        message: Message,
        task: Task[Any, Any],
        request: Request,
        soft: float | None,
        hard: float | None,
    ) -> Any:
        """Run a suspect in a sandbox child, retrying in a fresh one after each crash of its own."""
        crashes = await self._crash_count(message)
        if crashes >= self.max_deliveries:
            # Judged poison already: this is a copy of a message that was dead-lettered (a
            # broker that re-publishes to count deliveries can leave two), or its worker died
            # before dead-lettering it.
            if await self._record_status(message) is State.FAILURE:
                raise _AlreadyDeadLettered
            raise _Poison(
                f"crashed {crashes} times while running isolated (max_deliveries={self.max_deliveries})"
            )
        ref = sandbox_ref(task)
        while ref is not None:
            try:
                return await self.executor.run_isolated(ref, request, soft_time_limit=soft, time_limit=hard)
            except SandboxImportError as exc:
                logger.warning(
                    "task %s[%s]: %s; running it alone instead", task.name, message.id, describe_error(exc)
                )
                break
            except ProcessLostError as exc:
                if not exc.in_call:  # the sandbox itself cannot start: not this message's fault
                    logger.warning(
                        "sandbox unavailable (%s); running %s[%s] alone",
                        describe_error(exc),
                        task.name,
                        message.id,
                    )
                    break
                counted = await self._count_crash(message, crashes)
                crashes = crashes + 1 if counted is None else counted
                logger.warning(
                    "suspect task %s[%s] crashed its isolated process (%s): crash %d of %d",
                    task.name,
                    message.id,
                    exc.exc_message,
                    crashes,
                    self.max_deliveries,
                )
                if crashes >= self.max_deliveries:
                    raise _Poison(
                        f"crashed {crashes} times while running isolated (max_deliveries="
                        f"{self.max_deliveries}); last time: {exc.exc_message}"
                    ) from None
        return await self._run_alone(delivery, message, task, request, soft, hard)

    async def _run_alone(
        self,
        delivery: Delivery,
        message: Message,
        task: Task[Any, Any],
        request: Request,
        soft: float | None,
        hard: float | None,
    ) -> Any:
        """Run a suspect in this worker with nothing else running; its crash is its own."""
        # Counted before the run: if it kills the worker, the count survives in the backend.
        runs = await self._count_crash(message, None)
        if runs is None:  # no counters (rpc://): fall back to the delivery count
            crashes = delivery.delivery_count - 1
            unit = "deliveries ended without an outcome"
        else:
            crashes = runs - 1
            unit = "workers died while it ran alone"
        if crashes >= self.max_deliveries:
            raise _Poison(f"{crashes} {unit} (max_deliveries={self.max_deliveries})")
        logger.warning(
            "suspect task %s[%s] (delivery %d) runs alone in this worker",
            task.name,
            message.id,
            delivery.delivery_count,
        )
        async with self.executor.gate.exclusive():
            return await self.executor.run(task, request, soft_time_limit=soft, time_limit=hard)

    async def _is_suspect(self, delivery: Delivery, message: Message) -> bool:
        """True if an earlier delivery of ``message`` ended without an outcome (its worker lost).

        Deliveries this runner gave back on purpose (shutdown, an early ``eta``, a requeuing
        ``Reject``) are counted in the backend and do not make a message a suspect.
        """
        if delivery.delivery_count <= 1:
            return False
        returned = 0
        if self._backend.capabilities.counters:
            try:
                returned = await self._backend.incr(
                    _counter_key("returned", message), 0, ttl=self._counter_ttl
                )
            except AsyncqError as exc:
                logger.warning("could not read the return count of %s: %r", message.id, exc)
        return delivery.delivery_count - 1 > returned

    async def _give_back(
        self, delivery: Delivery, message: Message | None, *, delay: float | None = None
    ) -> None:
        """Return a delivery to its queue on purpose, noted so its next delivery is no suspect."""
        if message is not None and self._backend.capabilities.counters:
            try:
                await self._backend.incr(_counter_key("returned", message), 1, ttl=self._counter_ttl)
            except AsyncqError as exc:  # it will merely run isolated next time
                logger.warning("could not count the return of %s: %r", message.id, exc)
        await self._settle(delivery.nack(delay=delay))

    async def _count_crash(self, message: Message, local: int | None) -> int | None:
        """Add one isolated crash of ``message``; the total, kept in the backend when it can.

        ``local`` is the caller's own count, used when the backend has no counters (None then
        means "no count available").
        """
        if self._backend.capabilities.counters:
            try:
                return await self._backend.incr(
                    _counter_key("isolated-crashes", message), 1, ttl=self._counter_ttl
                )
            except AsyncqError as exc:
                logger.warning("could not count a crash of %s in the backend: %r", message.id, exc)
        return None if local is None else local + 1

    async def _claim_dead_letter(self, message: Message) -> bool:
        """True for the first copy of a poison message to be dead-lettered (atomic in the backend)."""
        if not self._backend.capabilities.counters:
            return True
        try:
            key = _counter_key("dead-lettered", message)
            return await self._backend.incr(key, 1, ttl=self._counter_ttl) == 1
        except AsyncqError as exc:
            logger.warning("could not claim the dead-lettering of %s: %r", message.id, exc)
            return True

    async def _crash_count(self, message: Message) -> int:
        """The isolated crashes counted for ``message`` so far (0 without counters)."""
        if not self._backend.capabilities.counters:
            return 0
        try:
            return await self._backend.incr(
                _counter_key("isolated-crashes", message), 0, ttl=self._counter_ttl
            )
        except AsyncqError as exc:
            logger.warning("could not read the crash count of %s: %r", message.id, exc)
            return 0

    async def _already_succeeded(self, message: Message) -> bool:
        """True if the backend holds a SUCCESS record for ``message`` (which no failure replaces)."""
        return await self._record_status(message) is State.SUCCESS

    async def _record_status(self, message: Message) -> State | None:
        """The stored state of ``message``, or None if there is none or it cannot be read."""
        if not self._reads_records:
            return None
        try:
            data = await self._backend.get(message.id)
            return None if data is None else decode_record(data, self._serializers).status
        except AsyncqError as exc:
            logger.warning("could not read the record of %s: %r", message.id, exc)
            return None

    # -- helpers --------------------------------------------------------------------------------

    def _request(self, delivery: Delivery, message: Message) -> Request:
        return Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            eta=message.eta,
            expires=message.expires,
            headers=message.headers,
            delivery_info={
                "queue": delivery.queue,
                "delivery_count": delivery.delivery_count,
                "priority": message.priority,
            },
            root_id=message.root_id,
            parent_id=message.parent_id,
            group_id=message.group_id,
            hostname=self.hostname,
            message=message,
            state_writer=functools.partial(self._write_state, message),
            loop=asyncio.get_running_loop(),
        )

    async def _write_state(self, message: Message, state: State | str, meta: dict[str, Any] | None) -> None:
        await self._store(message, State(state) if state in State.__members__ else state, meta=meta)

    async def _store(
        self,
        message: Message,
        status: State | str,
        *,
        result: Any = None,
        exc: BaseException | None = None,
        meta: dict[str, Any] | None = None,
        retries: int | None = None,
    ) -> bool:
        """Store a state; False only if a FAILURE was not stored over a SUCCESS (a duplicate)."""
        if message.ignore_result and status not in (State.FAILURE, State.REVOKED):
            return True
        state = status if isinstance(status, State) else _custom_state(status)
        if state is State.FAILURE and await self._already_succeeded(message):
            logger.warning(
                "task %s[%s] already succeeded; not replacing its result with %r",
                message.task,
                message.id,
                exc,
            )
            return False
        record = encode_record(
            self._serializers,
            task_id=message.id,
            status=state,
            result=result,
            exc=exc,
            meta=meta if isinstance(status, State) else {**(meta or {}), "state": status},
            retries=message.retries if retries is None else retries,
            task=message.task,
            serializer=self._result_serializer,
            encrypt=self._security.encrypts(self.app.tasks.get(message.task)),
        )
        try:
            await self._backend.set(message.id, record, final=state in _FINAL, ttl=self._result_ttl)
        except AsyncqError:
            logger.exception("could not store the %s state of task %s[%s]", state, message.task, message.id)
        return True

    async def _record_failure(self, task_id: str, task_name: str | None, exc: BaseException) -> None:
        await self._store(Message(id=task_id, task=task_name or "?"), State.FAILURE, exc=exc)

    def _outcome(self, message: Message, state: State) -> None:
        if self.on_outcome is not None:
            self.on_outcome(message.task, state)

    @staticmethod
    async def _settle(settling: Any) -> None:
        try:
            await settling
        except AsyncqError:
            # The broker redelivers what it did not hear settled: at-least-once still holds.
            logger.exception("could not settle a delivery; the broker will deliver it again")


_FINAL = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


def _counter_key(kind: str, message: Message) -> str:
    # Per attempt: a retry is a new message with the same id and its own delivery count.
    return f"asyncq.{kind}.{message.id}.{message.retries}"


def _custom_state(name: str) -> State:
    # Custom progress states (e.g. "PROGRESS") are stored as STARTED with the name in meta.
    return State.STARTED if name not in State.__members__ else State(name)


def _pid() -> int:
    import os

    return os.getpid()
