"""How the job runner writes task records: states, results, and where they go.

:class:`JobRecords` is the part of :class:`~asyncq.worker.job.JobRunner` that encodes a
record and stores it, in the result backend or at the sender's reply address (rpc://); a
FAILURE never replaces a stored SUCCESS (a duplicate's late failure).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asyncq.backends.base import REPLY_TO
from asyncq.exceptions import AsyncqError
from asyncq.message import Message
from asyncq.result import encode_record
from asyncq.states import State
from asyncq.unique.send import release_unique
from asyncq.unique.spec import UNIQUE_HEADER
from asyncq.worker.suspects import SuspectRuns

if TYPE_CHECKING:
    from asyncq.brokers import Broker
    from asyncq.security import MessageSecurity
    from asyncq.task import Task

__all__ = ["JobRecords"]

logger = logging.getLogger("asyncq.worker.job")  # the runner's log: one logger for the job path


class JobRecords(SuspectRuns):
    """Encoding and storing task records, for the job runner (duplicates found by SuspectRuns)."""

    _result_serializer: str
    _seals_results: bool
    _security: MessageSecurity
    _tasks: dict[str, Task[Any, Any]]
    _broker: Broker
    _result_ttl: float | None
    on_outcome: Callable[[str, State], None] | None

    def _success_record(self, message: Message, result: Any, seal: bool) -> bytes:
        """The SUCCESS record of a sealed or not-JSON result."""
        return encode_record(
            self._serializers,
            task_id=message.id,
            status=State.SUCCESS,
            result=result,
            retries=message.retries,
            task=message.task,
            serializer=self._result_serializer,
            encrypt=seal,
        )

    def _write(self, message: Message, record: bytes, final: bool) -> Awaitable[None]:
        """Store a record; to the sender's reply address when the message names one (rpc://)."""
        reply_to = message.headers.get(REPLY_TO) if message.headers else None
        if isinstance(reply_to, str):
            return self._backend.set_reply(
                message.id, record, final=final, ttl=self._result_ttl, reply_to=reply_to
            )
        return self._backend.set(message.id, record, final=final, ttl=self._result_ttl)

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
        task: Task[Any, Any] | None = None,
    ) -> bool:
        """Store a state; False only if a FAILURE was not stored over a SUCCESS (a duplicate)."""
        if status in _FINAL and UNIQUE_HEADER in message.headers:
            await release_unique(self._broker, message)  # done for good: the next copy may queue
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
            encrypt=self._seals_results
            and self._security.encrypts(task if task is not None else self._tasks.get(message.task)),
        )
        try:
            await self._write(message, record, state in _FINAL)
        except AsyncqError:
            logger.exception("could not store the %s state of task %s[%s]", state, message.task, message.id)
        return True

    async def _record_failure(self, task_id: str, task_name: str | None, exc: BaseException) -> None:
        await self._store(Message(id=task_id, task=task_name or "?"), State.FAILURE, exc=exc)

    def _outcome(self, message: Message, state: State) -> None:
        if self.on_outcome is not None:
            self.on_outcome(message.task, state)


_FINAL = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


def _custom_state(name: str) -> State:
    # Custom progress states (e.g. "PROGRESS") are stored as STARTED with the name in meta.
    return State.STARTED if name not in State.__members__ else State(name)
