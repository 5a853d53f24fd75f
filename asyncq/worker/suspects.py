"""The poison-message rule: how a worker runs a suspect and counts its crashes.

A message delivered again (``delivery_count > 1``) is a *suspect*, since its worker may have
died of it or of another message it held. A suspect runs isolated (see
:mod:`asyncq.worker.quarantine`), and only crashes while isolated count towards
``max_deliveries``; so a message that kills workers is dead-lettered once, and the healthy
messages that were in flight with it simply run again. The counters live in the result
backend (when it has counters), keyed per attempt, so they survive the workers they kill.

:class:`SuspectRuns` is the part of the job runner (:mod:`asyncq.worker.job`) that does
this; a first delivery never reaches it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from asyncq._utils import describe_error
from asyncq.exceptions import AsyncqError
from asyncq.result import decode_record
from asyncq.states import State
from asyncq.worker.procpool import ProcessLostError
from asyncq.worker.quarantine import SandboxImportError, sandbox_ref

if TYPE_CHECKING:
    from asyncq.backends import ResultBackend
    from asyncq.brokers import Delivery
    from asyncq.message import Message
    from asyncq.serializers import Serializers
    from asyncq.task import Request, Task
    from asyncq.worker.executor import Executor

__all__ = ["BACKSTOP_FACTOR", "COUNTER_TTL", "AlreadyDeadLettered", "Poison", "SuspectRuns"]

logger = logging.getLogger(__name__)

#: A message delivered more than ``max_deliveries * BACKSTOP_FACTOR`` times is dead-lettered
#: even if it never crashed while isolated: the last resort against a redelivery loop.
BACKSTOP_FACTOR: Final = 20
#: Seconds a message's counters (isolated crashes, deliberate returns) live in the result
#: backend when results never expire.
COUNTER_TTL: Final = 7 * 24 * 3600.0


class Poison(Exception):
    """Raised inside the runner when a suspect has crashed isolated too often."""


class AlreadyDeadLettered(Exception):
    """Raised inside the runner for a copy of a message already dead-lettered as poison."""


def counter_key(kind: str, message: Message) -> str:
    # Per attempt: a retry is a new message with the same id and its own delivery count.
    return f"asyncq.{kind}.{message.id}.{message.retries}"


class SuspectRuns:
    """Suspect detection, isolated runs and crash counting, for the job runner."""

    executor: Executor
    max_deliveries: int
    _backend: ResultBackend
    _serializers: Serializers
    _counter_ttl: float
    _reads_records: bool

    async def _is_suspect(self, delivery: Delivery, message: Message) -> bool:
        """True if an earlier delivery of ``message`` ended without an outcome (its worker lost).

        Deliveries the runner gave back on purpose (shutdown, an early ``eta``, a requeuing
        ``Reject``) are counted in the backend and do not make a message a suspect.
        """
        if delivery.delivery_count <= 1:
            return False
        returned = 0
        if self._backend.capabilities.counters:
            try:
                returned = await self._backend.incr(
                    counter_key("returned", message), 0, ttl=self._counter_ttl
                )
            except AsyncqError as exc:
                logger.warning("could not read the return count of %s: %r", message.id, exc)
        return delivery.delivery_count - 1 > returned

    async def _count_return(self, message: Message) -> None:
        """Note a delivery given back on purpose, so that its next delivery is no suspect."""
        if not self._backend.capabilities.counters:
            return
        try:
            await self._backend.incr(counter_key("returned", message), 1, ttl=self._counter_ttl)
        except AsyncqError as exc:  # it will merely run isolated next time
            logger.warning("could not count the return of %s: %r", message.id, exc)

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
                raise AlreadyDeadLettered
            raise Poison(
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
                    raise Poison(
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
            raise Poison(f"{crashes} {unit} (max_deliveries={self.max_deliveries})")
        logger.warning(
            "suspect task %s[%s] (delivery %d) runs alone in this worker",
            task.name,
            message.id,
            delivery.delivery_count,
        )
        async with self.executor.gate.exclusive():
            return await self.executor.run(task, request, soft_time_limit=soft, time_limit=hard)

    async def _count_crash(self, message: Message, local: int | None) -> int | None:
        """Add one isolated crash of ``message``; the total, kept in the backend when it can.

        ``local`` is the caller's own count, used when the backend has no counters (None then
        means "no count available").
        """
        if self._backend.capabilities.counters:
            try:
                return await self._backend.incr(
                    counter_key("isolated-crashes", message), 1, ttl=self._counter_ttl
                )
            except AsyncqError as exc:
                logger.warning("could not count a crash of %s in the backend: %r", message.id, exc)
        return None if local is None else local + 1

    async def _claim_dead_letter(self, message: Message) -> bool:
        """True for the first copy of a poison message to be dead-lettered (atomic in the backend)."""
        if not self._backend.capabilities.counters:
            return True
        try:
            key = counter_key("dead-lettered", message)
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
                counter_key("isolated-crashes", message), 0, ttl=self._counter_ttl
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
