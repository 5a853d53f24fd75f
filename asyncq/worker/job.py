"""One message's path through a worker: decode -> resolve -> execute -> record -> settle.

Every outcome settles the delivery exactly once. A message that cannot be processed
(undecodable, unknown task, poison) goes to the dead-letter store with the reason, and its
task record says why, so a caller waiting on it is not left hanging.

A redelivered message is a *suspect* and runs isolated: :mod:`asyncq.worker.suspects` holds
that rule. A suspect whose record is already SUCCESS is acknowledged without running, and a
stored SUCCESS is never replaced by a failure.

The first delivery of an ordinary task is the hot path: what is off (security checks,
events, tracking of STARTED) is decided once when the runner is built, not per message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asyncq._utils import describe_error, now
from asyncq.backends.base import REPLY_TO
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
from asyncq.flow.bucket import RateLimiter
from asyncq.flow.gate import FlowGate
from asyncq.message import Message
from asyncq.request import Request, _current
from asyncq.result import encode_success
from asyncq.states import State
from asyncq.task import Task
from asyncq.unique.send import release_unique
from asyncq.unique.spec import UNIQUE_HEADER
from asyncq.worker.records import JobRecords
from asyncq.worker.suspects import (
    BACKSTOP_FACTOR,
    COUNTER_TTL,
    AlreadyDeadLettered,
    Poison,
)
from asyncq.worker.tracking import JobBook, JobEntry

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.worker.executor import Executor

__all__ = ["BACKSTOP_FACTOR", "COUNTER_TTL", "JobRunner", "RateLimiter"]

logger = logging.getLogger(__name__)


class JobRunner(JobRecords):
    """Runs deliveries for one worker."""

    def __init__(self, app: App, executor: Executor, *, hostname: str, max_deliveries: int) -> None:
        self.app = app
        self.executor = executor
        self.hostname = hostname
        self.max_deliveries = max_deliveries
        self.backstop = max_deliveries * BACKSTOP_FACTOR
        # Limits (rate_limit, concurrency keys); the worker installs one backed by its store.
        self.flow = FlowGate(None, hostname=hostname, lease=30.0, poll_interval=0.2, default_scope="worker")
        # The worker's: give the job's concurrency slot back while it waits on a limit (True if
        # given), and take one again before it runs.
        self.give_slot: Callable[[], bool] = lambda: False
        self.take_slot: Callable[[], Awaitable[None]] = _nothing
        self._result_ttl: float | None = app.conf.result_expires
        self._counter_ttl = self._result_ttl or COUNTER_TTL
        self._acks_late_default = bool(app.conf.task_acks_late)
        self._track_started_default = bool(app.conf.task_track_started)
        self._default_limits = (app.conf.task_soft_time_limit, app.conf.task_time_limit)
        # Resolved once: the runner lives on one loop, and these are read for every task.
        self._tasks = app.tasks
        self._serializers = app.serializers
        security = self._security = app.security
        # Built once: with signing off, a delivery is decoded and size/depth-checked inline.
        self._open = security.incoming_opener()
        self._seals_results = security.cipher is not None
        self._result_serializer = app.conf.result_serializer
        self._json_results = self._result_serializer in ("json", "application/json")
        self._broker = app.broker
        self._backend = app.backend
        # A backend that can write a final record and ack its delivery in one round trip.
        self._set_and_ack: Callable[..., Awaitable[None] | None] | None = getattr(
            self._backend, "set_and_ack", None
        )
        self._gate = executor.gate
        self._loop: asyncio.AbstractEventLoop | None = None  # the runner's loop, taken at the first job
        caps = self._backend.capabilities
        # rpc:// keeps no readable state (and a get() there subscribes to the id): skip reading.
        self._reads_records = caps.shared or caps.counters
        self.on_outcome: Callable[[str, State], None] | None = None  # stats hook for the worker
        self._events: NoEvents = NO_EVENTS
        self._events_on = False
        self._book = JobBook()  # taken and running tasks, for inspect and revoke
        self._plain_book = True
        self.is_revoked: Callable[[str], bool] | None = None  # the worker's revocation check
        # Called at the very end of each handle() (the worker frees the job's slot there unless
        # told True: a queued flush holds it and gives it back through slot_back).
        self.on_finish: Callable[[bool], None] | None = None
        self.slot_back: Callable[[], None] | None = None
        # A backend that can queue (final record, ack) behind its flush in flight, awaited by nobody.
        self._queue_joint: Callable[..., bool] | None = getattr(self._backend, "queue_set_and_ack", None)
        # Per task type, decided at its first delivery: see _plan().
        self._plans: dict[Task[Any, Any], _Plan] = {}
        self._writer = self._write_state  # one bound method, not one per task

    @property
    def events(self) -> NoEvents:
        """The event hooks (the worker sets live ones when it sends events)."""
        return self._events

    @events.setter
    def events(self, hooks: NoEvents) -> None:
        self._events = hooks
        self._events_on = hooks.enabled  # read per task instead of calling empty hooks

    @property
    def book(self) -> JobBook:
        """Taken and running tasks, for inspect and revoke (tracing installs a subclass)."""
        return self._book

    @book.setter
    def book(self, book: JobBook) -> None:
        self._book = book
        self._plain_book = type(book) is JobBook  # a subclass hears start() (tracing opens spans)

    # -- the path -----------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery to the end; never raises except on cancellation."""
        message: Message | None = None
        entry: JobEntry | None = None
        kept = False  # the job's slot is held by a flush in flight (see _execute)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:
            try:
                message = self._open(delivery.body, self._serializers)
            except (SignatureError, SerializationError) as exc:
                await self._undecodable(delivery, exc)
                return
            if self._events_on:
                self._events.task_received(message)
            if self._plain_book:
                entry = self._book.entries[message.id] = JobEntry(message, delivery.queue)
            else:
                entry = self._book.reserve(message, delivery.queue)
            task = self._tasks.get(message.task)
            if (
                task is None
                or delivery.delivery_count > self.backstop
                or message.expires is not None
                or message.eta is not None
                or (self.is_revoked is not None and self.is_revoked(message.id))
            ):
                task = await self._resolve(delivery, message)
                if task is None:
                    return
            if task.rate is not None or task.concurrency is not None:
                kept = await self._limited(delivery, message, task, entry)
            else:
                kept = await self._execute(delivery, message, task, entry)
        except asyncio.CancelledError:
            if entry is not None and self.is_revoked is not None and self.is_revoked(entry.message.id):
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
            # By task id, as reserved: a transport may deliver under an id of its own.
            if entry is not None:
                if not self._plain_book:
                    self._book.finish(entry.message.id)
                elif self._book.entries.get(entry.message.id) is entry:  # not a copy's beside it
                    del self._book.entries[entry.message.id]
            if self.on_finish is not None:
                self.on_finish(kept)

    async def _undecodable(self, delivery: Delivery, exc: SignatureError | SerializationError) -> None:
        if isinstance(exc, SignatureError):
            # No result record: an unauthenticated message's id must not overwrite a real task's result.
            logger.error("dead-lettering message %s: %s", delivery.id, exc)
            await self._settle(delivery.dead_letter(str(exc)))
            return
        reason = f"undecodable message: {exc}"
        logger.error("dead-lettering message %s: %s", delivery.id, reason)
        if self._security.verifier is None:  # with signing on, an id not yet verified is not trusted
            await self._record_failure(delivery.id, None, exc)
        self._events.task_dead_lettered(None, reason, task_id=delivery.id, queue=delivery.queue)
        await self._settle(delivery.dead_letter(reason))

    async def _resolve(self, delivery: Delivery, message: Message) -> Task[Any, Any] | None:
        if delivery.delivery_count > self.backstop:
            reason = (
                f"delivered {delivery.delivery_count} times without finishing "
                f"(backstop {self.backstop} = max_deliveries x {BACKSTOP_FACTOR}); its workers keep dying"
            )
            await self._dead_letter(delivery, message, reason, WorkerLostError(reason))
            return None
        task = self._tasks.get(message.task)
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
        self._events.task_revoked(message, reason)
        revoked = TaskRevokedError(reason)
        await self._store(message, State.REVOKED, exc=revoked)
        await self._follow_up(message, State.REVOKED, None, revoked)
        await self._settle(delivery.ack())

    async def _limited(
        self, delivery: Delivery, message: Message, task: Task[Any, Any], entry: JobEntry
    ) -> bool:
        """Wait for the task's limits (unsettled, off the worker's slots), run it, give them back."""
        flow = self.flow
        try:
            key = flow.key_of(task, message)
        except Exception as exc:  # the user's concurrency_key raised: the message can never run
            reason = f"concurrency_key of {task.name} failed: {exc!r}"
            await self._dead_letter(delivery, message, reason, exc)
            return False
        gave = False
        events = self._events if self._events_on else None

        def waiting(held: Message, limit: str, value: str | None, wait: float | None) -> None:
            nonlocal gave
            if not gave:  # only a message that waits gives its slot back (no churn otherwise)
                gave = self.give_slot()
            if events is not None:
                events.task_waiting(held, limit, value, wait)

        try:
            try:
                permit = await flow.admit(task, message, key, waiting)
            finally:
                if gave:
                    await self.take_slot()
        except AsyncqError as exc:  # the limit store is away: try again in a moment
            logger.warning("task %s[%s]: limits unavailable (%s); returning it", task.name, message.id, exc)
            await self._give_back(delivery, message, delay=1.0)
            return False
        try:
            return await self._execute(delivery, message, task, entry)
        finally:
            await asyncio.shield(flow.release(permit))

    async def _execute(
        self, delivery: Delivery, message: Message, task: Task[Any, Any], entry: JobEntry
    ) -> bool:
        """Run the task and settle its delivery; True if a flush in flight settles it later."""
        plan = self._plans.get(task)
        if plan is None:
            plan = self._plans[task] = self._plan(task)
        acks_late, track, soft, hard, direct, seal = plan
        suspect = delivery.delivery_count > 1 and await self._is_suspect(delivery, message)
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
            return False
        if not acks_late:
            try:  # at-most-once: a crash from here on loses the task
                await delivery.ack()
            except AsyncqError:
                logger.exception("could not settle a delivery; the broker will deliver it again")
        request = self._request(delivery, message)
        if self._plain_book:
            entry.started, entry.request = time.time(), request
        else:
            self._book.start(message.id, request)
        if track:
            await self._store(message, State.STARTED, meta={"hostname": self.hostname, "pid": os.getpid()})
        started = time.perf_counter()
        if self._events_on:
            self._events.task_started(message)
        try:
            gate = self._gate
            if suspect:
                result = await self._run_suspect(delivery, message, task, request, soft, hard)
            elif direct and gate.is_open:
                # Executor.run's async path with no time limit, inlined: one coroutine less per task.
                gate.enter_open()
                token = _current.set((task, request))
                try:
                    result = await task._invoke(message.args, message.kwargs)
                finally:
                    _current.reset(token)
                    gate.leave()
            else:
                if gate.is_open:
                    gate.enter_open()
                else:
                    await gate.enter()  # a suspect is running alone in this worker: wait for it
                try:
                    result = await self.executor.run(task, request, soft_time_limit=soft, time_limit=hard)
                finally:
                    gate.leave()
        except Poison as poison:
            if await self._claim_dead_letter(message):
                await self._dead_letter(delivery, message, str(poison), WorkerLostError(str(poison)))
            else:  # another copy of it, run at the same time, was dead-lettered
                logger.warning(
                    "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
                )
                await self._settle(delivery.ack())
            return False
        except AlreadyDeadLettered:
            logger.warning(
                "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
            )
            await self._settle(delivery.ack())
            return False
        except Retry as retry:
            await self._retry(message, task, retry.exc, retry.when)
        except Reject as reject:
            self._events.task_rejected(message, reject.reason, reject.requeue)
            if reject.requeue:
                await self._give_back(delivery, message)
            else:
                await self._dead_letter(delivery, message, f"rejected by task: {reject.reason}", reject)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            options = task.options
            if options.autoretry_for and isinstance(exc, options.autoretry_for):
                await self._retry(message, task, exc, None)
            else:
                runtime = time.perf_counter() - started
                logger.warning("task %s[%s] failed in %.3fs: %r", task.name, message.id, runtime, exc)
                self._events.task_failed(message, exc, runtime)
                self._outcome(message, State.FAILURE)
                if await self._store(message, State.FAILURE, exc=exc):
                    await self._follow_up(message, State.FAILURE, None, exc)
        else:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "task %s[%s] succeeded in %.3fs", task.name, message.id, time.perf_counter() - started
                )
            if not message.ignore_result:
                # _store() of a SUCCESS, inline (the path of most tasks): nothing to check first.
                if seal or not self._json_results:
                    record = self._success_record(message, result, seal)
                else:
                    record = encode_success(message.id, result, message.retries, message.task)
                joint = None
                set_and_ack = self._set_and_ack
                if acks_late and set_and_ack is not None and not self._events_on and _ends_here(message):
                    queue_joint = self._queue_joint
                    if (
                        queue_joint is not None
                        and self.slot_back is not None
                        and queue_joint(
                            message.id,
                            record,
                            ttl=self._result_ttl,
                            delivery=delivery,
                            then=self._joint_settled,
                        )
                    ):
                        # Behind the flush in flight: the job ends now, without a step to resume
                        # it; its slot stays taken until the record and the ack are applied
                        # (_joint_settled), so unsettled work stays within the concurrency.
                        if self.on_outcome is not None:
                            self.on_outcome(message.task, State.SUCCESS)
                        return True
                    joint = set_and_ack(message.id, record, ttl=self._result_ttl, delivery=delivery)
                try:
                    if joint is not None:
                        # Nothing else to do before the ack: the record and the ack travel together.
                        await joint
                        if self.on_outcome is not None:
                            self.on_outcome(message.task, State.SUCCESS)
                        return False
                    await self._write(message, record, True)
                except AsyncqError:  # the delivery is open again when the joint call failed
                    logger.exception(
                        "could not store the SUCCESS state of task %s[%s]", message.task, message.id
                    )
            if UNIQUE_HEADER in message.headers:
                await release_unique(self._broker, message)  # done for good: the next copy may queue
            if self._events_on:
                self._events.task_succeeded(message, time.perf_counter() - started)
            if self.on_outcome is not None:
                self.on_outcome(message.task, State.SUCCESS)
            if message.callbacks or message.errbacks or message.chain or message.chord:
                await self._follow_up(message, State.SUCCESS, result, None)
        if acks_late:
            try:
                await delivery.ack()
            except AsyncqError:
                logger.exception("could not settle a delivery; the broker will deliver it again")
        return False

    async def _retry(
        self, message: Message, task: Task[Any, Any], exc: BaseException | None, when: float | None
    ) -> None:
        limit = task.max_retries
        if limit is not None and message.retries >= limit:
            failure = exc if exc is not None else AsyncqError(f"max_retries={limit} exceeded")
            logger.warning(
                "task %s[%s] gave up after %d retries: %r", task.name, message.id, message.retries, failure
            )
            self._events.task_failed(message, failure, 0.0)
            self._outcome(message, State.FAILURE)
            if await self._store(message, State.FAILURE, exc=failure):
                await self._follow_up(message, State.FAILURE, None, failure)
            return
        delay = task.retry_delay(message.retries) if when is None else when
        again = replace(message, retries=message.retries + 1, eta=now() + delay if delay > 0 else None)
        self._events.task_retried(message, exc, again.eta)  # before the next attempt's
        # RETRY is stored before the next attempt exists: stored after, it could land on top of
        # that attempt's SUCCESS (countdown=0, a fast worker) and leave the caller waiting.
        await self._store(message, State.RETRY, exc=exc, retries=again.retries, meta={"eta": again.eta})
        # Publish the next attempt before acking this one: a crash in between duplicates, never loses.
        await self._broker.publish(self.app.outgoing(again))
        logger.info("task %s[%s] retry %d in %.2fs: %r", task.name, message.id, again.retries, delay, exc)
        self._outcome(message, State.RETRY)

    async def _dead_letter(
        self, delivery: Delivery, message: Message, reason: str, exc: BaseException
    ) -> None:
        """Park a message that cannot run; tell its caller and its workflow why."""
        logger.error("dead-lettering %s[%s]: %s", message.task, message.id, reason)
        self._events.task_dead_lettered(message, reason)
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

    async def _give_back(
        self, delivery: Delivery, message: Message | None, *, delay: float | None = None
    ) -> None:
        """Return a delivery to its queue on purpose, noted so its next delivery is no suspect."""
        if message is not None:
            await self._count_return(message)
        await self._settle(delivery.nack(delay=delay))

    # -- helpers --------------------------------------------------------------------------------

    def _plan(self, task: Task[Any, Any]) -> _Plan:
        """What the options of ``task`` decide for each of its runs, with the app's defaults."""
        options = task.options
        soft, hard = self._default_limits
        soft = soft if options.soft_time_limit is None else options.soft_time_limit
        hard = hard if options.time_limit is None else options.time_limit
        return (
            self._acks_late_default if options.acks_late is None else bool(options.acks_late),
            self._track_started_default if options.track_started is None else bool(options.track_started),
            soft,
            hard,
            options.executor == "async" and soft is None and hard is None,
            self._seals_results and self._security.encrypts(task),
        )

    def _request(self, delivery: Delivery, message: Message) -> Request:
        # Request.delivered() without its call: positional, in the field order (a test pins it).
        return Request(
            message.id,
            message.task,
            message.args,
            message.kwargs,
            message.retries,
            message.eta,
            message.expires,
            message.headers,
            {
                "queue": delivery.queue,
                "delivery_count": delivery.delivery_count,
                "priority": message.priority,
            },
            message.root_id,
            message.parent_id,
            message.group_id,
            self.hostname,
            False,
            message,
            functools.partial(self._writer, message),
            self._loop,
        )

    def _joint_settled(self, delivery: Delivery, error: BaseException | None) -> None:
        """A queued (record, ack) pair was applied, or its flush failed: the job's slot comes back."""
        if error is not None:
            logger.error(
                "could not store the SUCCESS state of task %s (it will be delivered again): %s",
                delivery.id,
                describe_error(error),
            )
        if self.slot_back is not None:
            self.slot_back()

    @staticmethod
    async def _settle(settling: Any) -> None:
        try:
            await settling
        except AsyncqError:
            # The broker redelivers what it did not hear settled: at-least-once still holds.
            logger.exception("could not settle a delivery; the broker will deliver it again")


def _ends_here(message: Message) -> bool:
    """Nothing follows the SUCCESS record but the ack: no workflow, unique lock or reply address."""
    headers = message.headers
    if headers and (UNIQUE_HEADER in headers or REPLY_TO in headers):
        return False
    return not (message.callbacks or message.errbacks or message.chain or message.chord)


async def _nothing() -> None:
    """No slot to take back (a runner outside a worker)."""


#: acks_late, track_started, soft and hard time limits, whether the run can skip the
#: executor (async, no time limit), whether results are sealed.
_Plan = tuple[bool, bool, float | None, float | None, bool, bool]
