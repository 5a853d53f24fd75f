"""Eager mode (``task_always_eager``): tasks and canvases run inline when they are sent.

Celery's semantics: ``delay`` / ``apply_async`` run the task in the calling process, with no
broker, and return an already-finished result; retries run again at once (their countdown is
skipped), chains pass each result on, groups run every member, chords give the header's
results to the callback, ``link`` / ``link_error`` callbacks run after. A failure is kept in
the result (``get()`` raises it) unless ``task_eager_propagates`` is set: then the send itself
raises. Results are not stored in the backend.

Sync tasks run in a worker thread (``asyncio.to_thread``), so one that sends another task
(``other.delay()``) works as it would on a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

from asyncq._utils import new_id
from asyncq.constructs import Chain, Chord, Group
from asyncq.exceptions import ChordError, Retry
from asyncq.request import Request, _current
from asyncq.result import AsyncResult, GroupResult
from asyncq.signature import Signature, signature
from asyncq.states import State
from asyncq.sync import SyncGroupResult, SyncResult, blocking, is_loop_running
from asyncq.task import Task

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["EAGER_RETRY_LIMIT", "EagerGroupResult", "EagerResult", "apply_eagerly", "run_eagerly"]

#: Retries an eager task with ``max_retries=None`` may make before it counts as failed.
EAGER_RETRY_LIMIT: Final = 100


class EagerResult(AsyncResult[Any]):
    """The outcome of a task run eagerly: already known, read without a backend."""

    __slots__ = ("_exception", "_state", "_value")

    def __init__(
        self,
        task_id: str,
        app: App,
        *,
        task_name: str | None = None,
        state: State = State.SUCCESS,
        value: Any = None,
        exception: BaseException | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        super().__init__(task_id, app, task_name=task_name, parent=parent)
        self._state, self._value, self._exception = state, value, exception

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get().__await__()

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """The task's result; its exception is raised (returned with ``propagate=False``)."""
        if self._exception is not None:
            if propagate:
                raise self._exception
            return self._exception
        return self._value

    async def state(self) -> State:
        """SUCCESS or FAILURE."""
        return self._state

    async def info(self) -> Any:
        """The result, or the exception."""
        return self._exception if self._exception is not None else self._value

    async def ready(self) -> bool:
        """Always True: the task has run."""
        return True

    async def successful(self) -> bool:
        """True if the task succeeded."""
        return self._state == State.SUCCESS

    async def failed(self) -> bool:
        """True if the task raised."""
        return self._state == State.FAILURE

    async def forget(self) -> None:
        """Nothing is stored: nothing to forget."""


class EagerGroupResult(GroupResult):
    """A group run eagerly: the members' results, in order."""

    __slots__ = ()

    def _members(self) -> list[EagerResult]:
        return [r for r in self.results if isinstance(r, EagerResult)]

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Every member's result in order (nested groups as lists); the first failure raised."""
        return [await member.get(propagate=propagate) for member in self.results]

    async def state(self) -> State:
        """SUCCESS if every member succeeded, else FAILURE."""
        states = [await member.state() for member in self.results]
        return State.SUCCESS if all(s == State.SUCCESS for s in states) else State.FAILURE

    async def info(self) -> list[Any]:
        """Each member's result or exception."""
        return [await member.info() for member in self.results]

    async def ready(self) -> bool:
        """Always True."""
        return True

    async def successful(self) -> bool:
        """True if every member succeeded."""
        return (await self.state()) == State.SUCCESS

    async def failed(self) -> bool:
        """True if a member failed."""
        return (await self.state()) == State.FAILURE

    async def completed_count(self) -> int:
        """How many members succeeded."""
        return sum([await member.successful() for member in self.results])

    async def forget(self) -> None:
        """Nothing is stored."""


async def run_eagerly(app: App, sig: Signature[Any]) -> AsyncResult[Any]:
    """Run a frozen signature (any construct) inline; raise its failure if ``task_eager_propagates``."""
    result = await _run(app, sig, ())
    if app.conf.task_eager_propagates:
        await result.get()  # raises the first failure
    return result


def apply_eagerly(app: App, handle: AsyncResult[Any], sig: Signature[Any]) -> SyncResult[Any]:
    """Run ``sig`` now (no loop in this thread) or when awaited (in a running loop)."""
    if is_loop_running():
        if isinstance(handle, GroupResult):
            return SyncGroupResult(handle, _as_group(run_eagerly(app, sig)))
        return SyncResult(handle, run_eagerly(app, sig))
    result = blocking(app, run_eagerly(app, sig))
    return SyncGroupResult(result) if isinstance(result, GroupResult) else SyncResult(result)


async def _as_group(running: Coroutine[Any, Any, AsyncResult[Any]]) -> GroupResult:
    result = await running
    assert isinstance(result, GroupResult)
    return result


async def _run(app: App, sig: Signature[Any], prepend: tuple[Any, ...]) -> AsyncResult[Any]:
    if isinstance(sig, Chain):
        return await _chain(app, sig, prepend)
    if isinstance(sig, Chord):
        return await _chord(app, sig, prepend)
    if isinstance(sig, Group):
        members = [await _run(app, member, prepend) for member in sig.tasks]
        return EagerGroupResult(sig.group_id or new_id(), members, app)
    return await _task(app, sig, prepend)


async def _chain(app: App, sig: Chain, prepend: tuple[Any, ...]) -> AsyncResult[Any]:
    result: AsyncResult[Any] | None = None
    for index, step in enumerate(sig.tasks):
        if result is not None:
            if not await result.successful():
                # The rest cannot run: each reports the failure, as on a worker.
                error = await result.get(propagate=False)
                return _failed(app, sig.tasks[-1], error, result)
            prepend = (await result.get(),)
        elif index > 0:
            prepend = ()
        step_result = await _run(app, step, prepend)
        step_result.parent = result
        result = step_result
    assert result is not None, "an empty chain has nothing to run"
    return result


async def _chord(app: App, sig: Chord, prepend: tuple[Any, ...]) -> AsyncResult[Any]:
    header = await _run(app, sig.header, prepend)
    values = await header.get(propagate=False)
    failed = next((v for v in values if isinstance(v, BaseException)), None)
    if failed is not None:
        error = ChordError(f"chord {sig.header.group_id}: a header task failed: {failed!r}", "")
        return _failed(app, sig.body, error, header)
    result = await _run(app, sig.body, (values,))
    result.parent = header
    return result


def _failed(app: App, sig: Signature[Any], error: BaseException, parent: AsyncResult[Any]) -> EagerResult:
    last = list(sig._leaves())[-1]
    return EagerResult(
        last.options.get("task_id") or new_id(),
        app,
        task_name=last.task,
        state=State.FAILURE,
        exception=error,
        parent=parent,
    )


async def _task(app: App, sig: Signature[Any], prepend: tuple[Any, ...]) -> EagerResult:
    task = app.get_task(sig.task)
    args = sig.args if sig.immutable else (*prepend, *sig.args)
    task_id = sig.options.get("task_id") or new_id()
    request = Request(id=task_id, task=task.name, args=list(args), kwargs=dict(sig.kwargs), is_eager=True)
    while True:
        try:
            value = await _call(task, request)
        except Retry as retry:
            # task.retry() raises the task's error itself once max_retries is used up; this
            # bound only stops a task that retries forever (max_retries=None) from hanging a test.
            request.retries += 1
            if request.retries > EAGER_RETRY_LIMIT:
                error = retry.exc or RuntimeError(
                    f"task {task.name} retried {EAGER_RETRY_LIMIT} times eagerly"
                )
                outcome = EagerResult(task_id, app, task_name=task.name, state=State.FAILURE, exception=error)
                break
            continue
        except Exception as exc:
            retries_left = task.max_retries is None or request.retries < task.max_retries
            if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for) and retries_left:
                request.retries += 1
                continue
            outcome = EagerResult(task_id, app, task_name=task.name, state=State.FAILURE, exception=exc)
            break
        outcome = EagerResult(task_id, app, task_name=task.name, value=value)
        break
    await _callbacks(app, sig, outcome)
    return outcome


async def _call(task: Task[Any, Any], request: Request) -> Any:
    token = _current.set((task, request))  # self.request inside the task; to_thread copies it
    try:
        if task.is_async:
            return await task._invoke(request.args, request.kwargs)
        return await asyncio.to_thread(task._invoke, request.args, request.kwargs)
    finally:
        _current.reset(token)


async def _callbacks(app: App, sig: Signature[Any], outcome: EagerResult) -> None:
    if outcome._exception is None:
        for data in sig.options.get("link") or ():
            await _run(app, signature(data, app=app), (outcome._value,))
        return
    error = {"type": _qualified_name(outcome._exception), "message": str(outcome._exception)}
    for data in sig.options.get("link_error") or ():
        await _run(app, signature(data, app=app), (outcome.id, error))


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"
