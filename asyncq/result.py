"""Task records in the result backend, and AsyncResult: awaiting, reading and forgetting them.

A record is a JSON object (``status``, ``result`` or ``exc_*`` fields, ``meta``,
``date_done``, ``retries``, ``task``); docs/protocol.md describes it. A failed task's
exception is rebuilt as its own type when that type is already imported in the waiting
process (asyncq never imports a module because a record names it), otherwise it is raised
as :class:`~asyncq.exceptions.TaskError` with the remote type name and traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import traceback
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from asyncq._utils import utcnow_iso
from asyncq.exceptions import SerializationError, TaskError, TaskRevokedError
from asyncq.exceptions import TimeoutError as ResultTimeoutError
from asyncq.serializers import Serializers, json_dumps, json_dumps_within, json_loads
from asyncq.states import READY_STATES, State

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "AsyncResult",
    "GroupResult",
    "ResultRecord",
    "decode_record",
    "encode_record",
    "encode_success",
    "exception_from_record",
]

R = TypeVar("R")
_JSON = "application/json"
#: How json_dumps writes a string (asyncq's JSON keeps non-ASCII text as it is).
_json_str = json.encoder.encode_basestring


@dataclass(slots=True)
class ResultRecord:
    """The decoded record of one task."""

    task_id: str
    status: State
    result: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    exc_type: str | None = None
    exc_message: str | None = None
    exc_args: list[Any] | None = None
    traceback: str | None = None
    retries: int = 0
    task: str | None = None
    date_done: str | None = None
    children: list[str] | None = None

    @property
    def is_ready(self) -> bool:
        """True once the record can no longer change."""
        return self.status in READY_STATES


def _qualified_name(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def _jsonable_args(args: tuple[Any, ...]) -> list[Any] | None:
    try:
        json_dumps(list(args))
    except SerializationError:
        return None
    return list(args)


def encode_record(
    serializers: Serializers,
    *,
    task_id: str,
    status: State,
    result: Any = None,
    exc: BaseException | None = None,
    meta: dict[str, Any] | None = None,
    retries: int = 0,
    task: str | None = None,
    serializer: str = "json",
    children: list[str] | None = None,
    encrypt: bool = False,
) -> bytes:
    """Encode a task record for the result backend; ``encrypt`` seals the result (serializers.cipher)."""
    record: dict[str, Any] = {"task_id": task_id, "status": str(status), "retries": retries, "task": task}
    if meta:
        record["meta"] = meta
    if children:
        record["children"] = children
    if status in READY_STATES:
        record["date_done"] = utcnow_iso()
    if exc is not None:
        record["exc_type"] = _qualified_name(type(exc))
        record["exc_message"] = str(exc)
        record["exc_args"] = _jsonable_args(exc.args)
        record["traceback"] = "".join(traceback.format_exception(exc))
    elif result is not None:
        if encrypt and serializers.cipher is not None:
            content_type, data = serializers.dumps(result, serializer)
            record["encryption"], data = serializers.cipher.seal(data, _result_aad(task_id))
            record["content_type"] = content_type
            record["result_body"] = base64.b64encode(data).decode("ascii")
        elif serializer in ("json", _JSON):
            record["result"] = result  # encoded with the record: one readable JSON document
        else:
            content_type, data = serializers.dumps(result, serializer)
            record["content_type"] = content_type
            record["result_body"] = base64.b64encode(data).decode("ascii")
    return json_dumps(record)


def encode_success(task_id: str, result: Any, retries: int, task: str) -> bytes:
    """:func:`encode_record` of a SUCCESS with a JSON, unsealed result (the same bytes, sooner)."""
    if type(task_id) is str and type(task) is str and type(retries) is int:
        # Written as text around the result's own encoding: one record per finished task, and
        # a dict built only to be encoded cost more than the record's few fixed fields.
        head = (
            f'{{"task_id":{_json_str(task_id)},"status":"SUCCESS","retries":{retries},'
            f'"task":{_json_str(task)},"date_done":"{utcnow_iso()}"'
        )
        if result is not None:
            return json_dumps_within(head + ',"result":', result, "}")
        try:
            return (head + "}").encode()
        except UnicodeEncodeError:  # a lone surrogate: the generic path below names the problem
            pass
    record: dict[str, Any] = {
        "task_id": task_id,
        "status": "SUCCESS",
        "retries": retries,
        "task": task,
        "date_done": utcnow_iso(),
    }
    if result is not None:
        record["result"] = result
    return json_dumps(record)


def _result_aad(task_id: str) -> bytes:
    # Binds a sealed result to its task id: copied onto another task's record, it does not open.
    return f"asyncq:result:{task_id}".encode()


def decode_record(data: bytes, serializers: Serializers) -> ResultRecord:
    """Decode a record read from the result backend."""
    raw = json_loads(data)
    if not isinstance(raw, dict) or "status" not in raw:
        raise SerializationError("result record is not a JSON object with a status")
    result = raw.get("result")
    if "result_body" in raw:
        data = base64.b64decode(raw["result_body"])
        if "encryption" in raw:
            if serializers.cipher is None:
                raise SerializationError("the result is encrypted but security_encryption_key is not set")
            data = serializers.cipher.open(raw["encryption"], data, _result_aad(str(raw.get("task_id"))))
        result = serializers.loads(data, raw.get("content_type", _JSON))
    return ResultRecord(
        task_id=raw.get("task_id", ""),
        status=State(raw["status"]),
        result=result,
        meta=raw.get("meta") or {},
        exc_type=raw.get("exc_type"),
        exc_message=raw.get("exc_message"),
        exc_args=raw.get("exc_args"),
        traceback=raw.get("traceback"),
        retries=int(raw.get("retries") or 0),
        task=raw.get("task"),
        date_done=raw.get("date_done"),
        children=raw.get("children"),
    )


def exception_from_record(record: ResultRecord) -> BaseException:
    """Rebuild the exception a failed (or revoked) task raised."""
    if record.status == State.REVOKED:
        return TaskRevokedError(record.exc_message or f"task {record.task_id} was revoked")
    exc_type = record.exc_type or "builtins.Exception"
    module_name, _, qualname = exc_type.rpartition(".")
    module = sys.modules.get(module_name)  # only already-imported modules: records are remote data
    cls: Any = module
    for part in qualname.split(".") if module is not None else ():
        cls = getattr(cls, part, None)
    remote = TaskError(exc_type, record.exc_message or "", record.traceback or "")
    # Only Exception subclasses: re-raising a BaseException (Retry, Reject, SystemExit...) in the
    # caller would escape its error handling.
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(*record.exc_args) if record.exc_args is not None else cls(record.exc_message)
        except Exception:  # a constructor with other arguments: fall back to TaskError
            return remote
        exc.__cause__ = remote  # keeps the worker's traceback reachable
        return exc
    return remote


class AsyncResult(Generic[R]):
    """A handle on one task's outcome: ``await result`` or ``await result.get(timeout=...)``.

    ``R`` is the task's return type, so results of typed tasks are typed.
    """

    __slots__ = ("app", "id", "parent", "task_name")

    def __init__(
        self, task_id: str, app: App, *, task_name: str | None = None, parent: AsyncResult[Any] | None = None
    ):
        self.id = task_id
        self.app = app
        self.task_name = task_name
        self.parent = parent

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.task_name or ''}>".replace(" >", ">")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, R]:
        return self.get().__await__()

    async def _record(self) -> ResultRecord | None:
        data = await self.app.backend.get(self.id)
        return None if data is None else decode_record(data, self.app.serializers)

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """Wait for the task to finish and return its result.

        Raises:
            asyncq.exceptions.TimeoutError: ``timeout`` seconds passed first.
            the task's exception: the task failed (``propagate=False`` returns it instead).
            asyncq.exceptions.TaskRevokedError: the task was revoked or expired.
        """
        backend = self.app.backend
        await self.app.connect()
        data = await backend.wait(self.id, timeout=timeout)
        if data is None:
            raise ResultTimeoutError(f"task {self.id} did not finish within {timeout}s")
        record = decode_record(data, self.app.serializers)
        if record.status == State.SUCCESS:
            result: R = record.result
            return result
        exc = exception_from_record(record)
        if propagate:
            raise exc
        return exc  # type: ignore[return-value]

    async def state(self) -> State:
        """The task's current state; PENDING when the backend knows nothing of it."""
        await self.app.connect()
        record = await self._record()
        return State.PENDING if record is None else record.status

    async def info(self) -> Any:
        """The result if finished, the exception if failed, the progress meta otherwise."""
        await self.app.connect()
        record = await self._record()
        if record is None:
            return None
        if record.status == State.SUCCESS:
            return record.result
        if record.status in READY_STATES:
            return exception_from_record(record)
        return record.meta

    async def ready(self) -> bool:
        """True once the task has finished (successfully or not) or was revoked."""
        return (await self.state()) in READY_STATES

    async def successful(self) -> bool:
        """True if the task finished successfully."""
        return (await self.state()) == State.SUCCESS

    async def failed(self) -> bool:
        """True if the task finished with an exception."""
        return (await self.state()) == State.FAILURE

    def _revoke_ids(self) -> list[str]:
        """This task's id and those of the workflow steps before it (a chain's earlier links)."""
        ids = [self.id]
        if self.parent is not None:
            ids += self.parent._revoke_ids()
        return ids

    async def revoke(self, *, terminate: bool = False) -> None:
        """Revoke the task and, for a workflow's result, every member before it.

        One that has not started is skipped wherever it waits (state REVOKED, its workflow
        fails); with ``terminate`` a running one is stopped too. See ``app.control.revoke``.
        """
        await self.app.control.revoke(list(dict.fromkeys(self._revoke_ids())), terminate=terminate)

    async def forget(self) -> None:
        """Delete the task's record from the backend."""
        await self.app.connect()
        await self.app.backend.forget(self.id)


#: Record ids per ``get_many`` round trip when reading a group's results.
_FETCH_BATCH = 1000


class GroupResult(AsyncResult[list[Any]]):
    """The results of a group, in member order: ``await gres`` or ``await gres.get(timeout=...)``.

    ``id`` is the group id; ``results`` holds one handle per member (an AsyncResult, or a
    GroupResult for a nested group). Reads go through ``get_many`` in batches, and waiting
    blocks on one unfinished member at a time, so a 10,000-member group costs a few round
    trips per wake-up rather than 10,000 waiters.
    """

    __slots__ = ("results",)

    def __init__(
        self,
        group_id: str,
        results: Iterable[AsyncResult[Any]],
        app: App,
        *,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        super().__init__(group_id, app, parent=parent)
        self.results = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} results]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def _leaves(self) -> list[AsyncResult[Any]]:
        leaves: list[AsyncResult[Any]] = []
        for result in self.results:
            leaves.extend(result._leaves() if isinstance(result, GroupResult) else [result])
        return leaves

    def _revoke_ids(self) -> list[str]:
        ids = [i for result in self.results for i in result._revoke_ids()]
        if self.parent is not None:
            ids += self.parent._revoke_ids()
        return ids

    async def _ready_records(self, task_ids: list[str]) -> dict[str, ResultRecord]:
        ready: dict[str, ResultRecord] = {}
        for start in range(0, len(task_ids), _FETCH_BATCH):
            chunk = task_ids[start : start + _FETCH_BATCH]
            for task_id, data in zip(chunk, await self.app.backend.get_many(chunk), strict=True):
                if data is not None:
                    record = decode_record(data, self.app.serializers)
                    if record.is_ready:
                        ready[task_id] = record
        return ready

    def _shape(self, records: dict[str, ResultRecord]) -> list[Any]:
        values: list[Any] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                values.append(result._shape(records))
                continue
            record = records.get(result.id)
            if record is None:
                values.append(None)
            elif record.status == State.SUCCESS:
                values.append(record.result)
            else:
                values.append(exception_from_record(record))
        return values

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for every member and return their results in order (nested groups as lists).

        Raises:
            asyncq.exceptions.TimeoutError: ``timeout`` seconds passed first.
            a member's exception: as soon as a member is seen failed (the first in group
                order among those finished); ``propagate=False`` puts exceptions in the list.
        """
        await self.app.connect()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        order = [leaf.id for leaf in self._leaves()]
        pending = list(dict.fromkeys(order))
        records: dict[str, ResultRecord] = {}
        while True:
            records.update(await self._ready_records(pending))
            pending = [task_id for task_id in pending if task_id not in records]
            if propagate:
                for task_id in order:
                    record = records.get(task_id)
                    if record is not None and record.status != State.SUCCESS:
                        raise exception_from_record(record)
            if not pending:
                return self._shape(records)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            # Members mostly finish in publish order: waiting on the last unfinished one, then
            # reading the rest in bulk, takes few round trips.
            if await self.app.backend.wait(pending[-1], timeout=remaining) is None:
                break
        raise ResultTimeoutError(
            f"group {self.id}: {len(pending)} of {len(order)} tasks did not finish within {timeout}s"
        )

    async def _all_records(self) -> tuple[int, dict[str, ResultRecord]]:
        await self.app.connect()
        ids = [leaf.id for leaf in self._leaves()]
        return len(ids), await self._ready_records(ids)

    async def completed_count(self) -> int:
        """How many members finished successfully."""
        _, records = await self._all_records()
        return sum(1 for record in records.values() if record.status == State.SUCCESS)

    async def state(self) -> State:
        """SUCCESS once every member succeeded, FAILURE once all finished and one did not, else PENDING."""
        total, records = await self._all_records()
        if len(records) < total:
            return State.PENDING
        if all(record.status == State.SUCCESS for record in records.values()):
            return State.SUCCESS
        return State.FAILURE

    async def info(self) -> list[Any]:
        """Each member's result, exception, or None while it runs, in order."""
        _, records = await self._all_records()
        return self._shape(records)

    async def ready(self) -> bool:
        """True once every member has finished."""
        total, records = await self._all_records()
        return len(records) == total

    async def successful(self) -> bool:
        """True if every member finished successfully."""
        return (await self.state()) == State.SUCCESS

    async def failed(self) -> bool:
        """True if a member finished with an exception (others may still run)."""
        _, records = await self._all_records()
        return any(record.status != State.SUCCESS for record in records.values())

    async def forget(self) -> None:
        """Delete every member's record."""
        await self.app.connect()
        for leaf in self._leaves():
            await self.app.backend.forget(leaf.id)
