"""One message's path through a worker: decode -> resolve -> execute -> record -> settle.

Every outcome settles the delivery exactly once. A message that cannot be processed
(undecodable, unknown task, poison) goes to the dead-letter store with the reason, and its
task record says why, so a caller waiting on it is not left hanging.

A redelivered message is a *suspect* and runs isolated: :mod:`asyncq.worker.suspects` holds
that rule. A suspect whose record is already SUCCESS is acknowledged without running, and a
stored SUCCESS is never replaced by a failure.

The first delivery of an ordinary task is the hot path: what is off (security checks,
events, tracking of STARTED) is decided once when the runner is built, not per message, and
the whole path is one coroutine. What does not simply succeed is settled by the methods of
:class:`~asyncq.worker.outcomes.JobOutcomes`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asyncq.backends.base import REPLY_TO
from asyncq.brokers import Delivery
from asyncq.events import NO_EVENTS, NoEvents
from asyncq.exceptions import (
    AsyncqError,
    Reject,
    Retry,
    SerializationError,
    SignatureError,
)
from asyncq.flow.bucket import RateLimiter
from asyncq.flow.gate import FlowGate, Permit
from asyncq.message import Message
from asyncq.request import Request, _current
from asyncq.result import encode_success
from asyncq.states import State
from asyncq.task import Task
from asyncq.unique.send import release_unique
from asyncq.unique.spec import UNIQUE_HEADER
from asyncq.worker.outcomes import JobOutcomes
from asyncq.worker.suspects import (
    BACKSTOP_FACTOR,
    COUNTER_TTL,
)
from asyncq.worker.tracking import JobBook, JobEntry

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.worker.executor import Executor

__all__ = ["BACKSTOP_FACTOR", "COUNTER_TTL", "JobRunner", "RateLimiter"]

logger = logging.getLogger(__name__)


class JobRunner(JobOutcomes):
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
        kept = False  # the job's slot is held by a flush in flight (see _joint_settled)
        permit: Permit | None = None  # of the task's limits, given back at the end
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
                permit = await self._admit(delivery, message, task)
                if permit is None:
                    return
            # The run, inline: one coroutine per job (an inner one cost a frame per task).
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
                return
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
                await self._store(
                    message, State.STARTED, meta={"hostname": self.hostname, "pid": os.getpid()}
                )
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
            except asyncio.CancelledError:
                raise
            except (Exception, Retry, Reject) as error:
                if await self._raised(delivery, message, task, error, started):
                    return
            else:
                if logger.isEnabledFor(logging.INFO):
                    logger.info(
                        "task %s[%s] succeeded in %.3fs",
                        task.name,
                        message.id,
                        time.perf_counter() - started,
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
                            kept = True
                            return
                        joint = set_and_ack(message.id, record, ttl=self._result_ttl, delivery=delivery)
                    try:
                        if joint is not None:
                            # Nothing else to do before the ack: the record and the ack travel together.
                            await joint
                            if self.on_outcome is not None:
                                self.on_outcome(message.task, State.SUCCESS)
                            return
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
            if permit is not None:
                await asyncio.shield(self.flow.release(permit))
            # By task id, as reserved: a transport may deliver under an id of its own.
            if entry is not None:
                if not self._plain_book:
                    self._book.finish(entry.message.id)
                elif self._book.entries.get(entry.message.id) is entry:  # not a copy's beside it
                    del self._book.entries[entry.message.id]
            if self.on_finish is not None:
                self.on_finish(kept)

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
