"""What the job runner does with each outcome that is not the plain success.

:class:`JobOutcomes` is the part of :class:`~asyncq.worker.job.JobRunner` that settles a
delivery which cannot run (undecodable, unknown, revoked, expired, early), waits for its
limits, and handles a task's exception: a retry, a rejection, a failure, a poison message.
Every one of them settles the delivery exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asyncq._utils import describe_error, now
from asyncq.brokers import Delivery
from asyncq.events import NoEvents
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
from asyncq.flow.gate import FlowGate, Permit
from asyncq.message import Message
from asyncq.states import State
from asyncq.task import Task
from asyncq.worker.records import JobRecords
from asyncq.worker.suspects import BACKSTOP_FACTOR, AlreadyDeadLettered, Poison

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["JobOutcomes"]

logger = logging.getLogger("asyncq.worker.job")  # the runner's log: one logger for the job path


class JobOutcomes(JobRecords):
    """Settling what does not simply succeed, for the job runner."""

    app: App
    backstop: int
    flow: FlowGate
    give_slot: Callable[[], bool]
    take_slot: Callable[[], Awaitable[None]]
    slot_back: Callable[[], None] | None
    is_revoked: Callable[[str], bool] | None
    _events: NoEvents
    _events_on: bool

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

    async def _admit(self, delivery: Delivery, message: Message, task: Task[Any, Any]) -> Permit | None:
        """Wait for the task's limits (unsettled, off the worker's slots); None if it was settled.

        The caller runs the task, then gives the :class:`Permit` back to ``flow.release``.
        """
        flow = self.flow
        try:
            key = flow.key_of(task, message)
        except Exception as exc:  # the user's concurrency_key raised: the message can never run
            reason = f"concurrency_key of {task.name} failed: {exc!r}"
            await self._dead_letter(delivery, message, reason, exc)
            return None
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
            return None
        return permit

    async def _raised(
        self, delivery: Delivery, message: Message, task: Task[Any, Any], error: BaseException, started: float
    ) -> bool:
        """What a task's exception decides (retry, reject, failure, poison); True if settled here.

        False leaves the ack of an ``acks_late`` delivery to the caller, as after a success.
        """
        if isinstance(error, Poison):
            if await self._claim_dead_letter(message):
                await self._dead_letter(delivery, message, str(error), WorkerLostError(str(error)))
            else:  # another copy of it, run at the same time, was dead-lettered
                logger.warning(
                    "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
                )
                await self._settle(delivery.ack())
            return True
        if isinstance(error, AlreadyDeadLettered):
            logger.warning(
                "task %s[%s] was dead-lettered already; acknowledging this copy", message.task, message.id
            )
            await self._settle(delivery.ack())
            return True
        if isinstance(error, Retry):
            await self._retry(message, task, error.exc, error.when)
            return False
        if isinstance(error, Reject):
            self._events.task_rejected(message, error.reason, error.requeue)
            if error.requeue:
                await self._give_back(delivery, message)
            else:
                await self._dead_letter(delivery, message, f"rejected by task: {error.reason}", error)
            return True
        exc = error
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
