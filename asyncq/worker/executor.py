"""Running task functions: coroutines on the loop, sync functions in threads, CPU work in processes.

Each executor enforces the soft and hard time limits its medium allows:

* async: the soft limit cancels the coroutine (it sees ``CancelledError`` and may clean
  up; the outcome is :class:`SoftTimeLimitExceeded`); the hard limit stops waiting for it.
* thread: the soft limit raises :class:`SoftTimeLimitExceeded` inside the thread (at the
  next Python bytecode); a thread cannot be killed, so at the hard limit the task is
  failed with :class:`TimeLimitExceeded`, the thread is left to finish on its own, and the
  pool starts a replacement so that its capacity stays as configured.
* process: the soft limit signals the child, which raises :class:`SoftTimeLimitExceeded`
  inside the function; the hard limit kills the child and starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asyncq.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from asyncq.request import Request, _current
from asyncq.task import _done
from asyncq.worker.procpool import ProcessPool, notify_parent
from asyncq.worker.quarantine import IsolationGate, request_fields, run_suspect
from asyncq.worker.threads import ThreadPool

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from asyncq.states import State
    from asyncq.task import Task

__all__ = ["Executor"]


class _ThreadCall:
    """One sync call in a pool thread, interruptible by an exception raised into that thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ident: int | None = None  # set while the task's code runs

    def __call__(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            self._ident = threading.get_ident()
        try:
            return fn(*args)
        finally:
            try:
                with self._lock:
                    self._ident = None
            except (SoftTimeLimitExceeded, TimeLimitExceeded):
                # Raised into the thread just as the task returned: it is no longer the task's.
                with self._lock:
                    self._ident = None

    def abandon(self, pool: ThreadPool) -> None:
        """Give up on the thread if it still runs the task's code: the pool replaces it."""
        with self._lock:
            if self._ident is not None:
                pool.abandon(self._ident)

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` inside the thread if it is still running the task's code."""
        with self._lock:
            if self._ident is None:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._ident), ctypes.py_object(exc_type)
            )
            return True


def _progress_to_parent(state: State | str, meta: dict[str, Any] | None) -> Awaitable[None]:
    """Child side of ``update_state``: the parent stores the state; nothing left to await here."""
    notify_parent((state, meta))
    return _done()


def _run_in_process(task_ref: str, args: list[Any], kwargs: dict[str, Any], request: dict[str, Any]) -> Any:
    """Child-process entry: import the task by reference and run it with its request context."""
    from asyncq._utils import import_string

    task = import_string(task_ref)
    token = _current.set((task, Request(**request, state_writer=_progress_to_parent)))
    trace = _attach_trace(request.get("headers") or {})
    try:
        return task._invoke(args, kwargs)
    finally:
        if trace is not None:
            trace()
        _current.reset(token)


def _attach_trace(headers: dict[str, Any]) -> Callable[[], None] | None:
    """Child side: make the trace context in ``headers`` current, so spans the task opens here,
    and what it sends, continue the worker's process span; return what undoes it.
    """
    if "traceparent" not in headers:
        return None
    try:
        from opentelemetry import context, propagate
    except ImportError:  # a producer traced, this worker's environment has no opentelemetry
        return None
    token = context.attach(propagate.extract(headers))
    return lambda: context.detach(token)


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Executor:
    """Runs one task call in the medium its ``executor`` option names, within its time limits."""

    def __init__(
        self,
        *,
        thread_pool_size: int | None = None,
        process_pool_size: int | None = None,
        sandbox_size: int | None = None,
    ) -> None:
        cpus = os.cpu_count() or 1
        self.thread_pool_size = thread_pool_size or min(32, cpus + 4)
        self.process_pool_size = process_pool_size or cpus
        # Suspects are few (the messages in flight when a worker died); a few children run
        # them in parallel without each one paying for a process start.
        self.sandbox_size = sandbox_size or max(2, min(4, cpus))
        self.gate = IsolationGate()
        #: When tracing: the headers that carry the current trace context into a child process.
        self.child_trace_headers: Callable[[], dict[str, str]] | None = None
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None
        self._sandbox: ProcessPool | None = None

    async def run(
        self,
        task: Task[Any, Any],
        request: Request,
        *,
        soft_time_limit: float | None,
        time_limit: float | None,
    ) -> Any:
        """Run ``task`` with ``request``'s arguments; return its result or raise its exception."""
        executor = task.options.executor
        if executor == "async":
            if soft_time_limit is None and time_limit is None:
                # The hot path, inlined: no extra coroutine and no extra task.
                token = _current.set((task, request))
                try:
                    return await task._invoke(request.args, request.kwargs)
                finally:
                    _current.reset(token)
            return await self._run_async(task, request, soft_time_limit, time_limit)
        if executor == "thread":
            return await self._run_thread(task, request, soft_time_limit, time_limit)
        return await self._run_process(task, request, soft_time_limit, time_limit)

    async def _run_async(
        self, task: Task[Any, Any], request: Request, soft: float | None, hard: float | None
    ) -> Any:
        token = _current.set((task, request))
        try:
            if soft is None and hard is None:
                return await task._invoke(request.args, request.kwargs)
            inner = asyncio.ensure_future(task._invoke(request.args, request.kwargs))
        finally:
            _current.reset(token)
        try:
            first = min(x for x in (soft, hard) if x is not None)
            done, _ = await asyncio.wait({inner}, timeout=first)
            if done:
                return inner.result()
            if soft is not None and (hard is None or soft < hard):
                inner.cancel(f"soft time limit of {soft}s")
                done, _ = await asyncio.wait({inner}, timeout=None if hard is None else hard - soft)
                if done:
                    if inner.cancelled():
                        raise SoftTimeLimitExceeded(
                            f"task {task.name} exceeded its soft time limit of {soft}s"
                        )
                    return inner.result()  # the task handled the cancellation and returned
            inner.cancel(f"time limit of {hard}s")
            raise TimeLimitExceeded(f"task {task.name} exceeded its time limit of {hard}s")
        except asyncio.CancelledError:
            inner.cancel()
            raise

    async def _run_thread(
        self, task: Task[Any, Any], request: Request, soft: float | None, hard: float | None
    ) -> Any:
        if self._threads is None:
            self._threads = ThreadPool(self.thread_pool_size, thread_name_prefix="asyncq-task")
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        context.run(_current.set, (task, request))
        call = _ThreadCall()
        invoke = functools.partial(context.run, task._invoke, request.args, request.kwargs)
        future = loop.run_in_executor(self._threads, call, invoke)
        if soft is None and hard is None:
            return await future
        first = min(x for x in (soft, hard) if x is not None)
        done, _ = await asyncio.wait({future}, timeout=first)
        if done:
            return future.result()
        if soft is not None and (hard is None or soft < hard):
            call.interrupt(SoftTimeLimitExceeded)
            done, _ = await asyncio.wait({future}, timeout=None if hard is None else hard - soft)
            if done:
                return future.result()
        # Best effort: the exception lands at the thread's next bytecode, never inside C code.
        # Either way the pool replaces the thread now, so capacity stays as configured, and
        # the late outcome is retrieved so that nothing logs "exception was never retrieved".
        call.interrupt(TimeLimitExceeded)
        call.abandon(self._threads)
        future.add_done_callback(_discard_outcome)
        raise TimeLimitExceeded(f"task {task.name} exceeded its time limit of {hard}s")

    def _child_fields(self, request: Request) -> dict[str, Any]:
        """The request to rebuild in a child, its headers carrying the current trace context."""
        fields = request_fields(request)
        if self.child_trace_headers is not None:
            fields["headers"] = {**(fields.get("headers") or {}), **self.child_trace_headers()}
        return fields

    async def _run_process(
        self, task: Task[Any, Any], request: Request, soft: float | None, hard: float | None
    ) -> Any:
        if self._processes is None:
            self._processes = ProcessPool(self.process_pool_size)
        ref = f"{task.__module__}:{task.__qualname__}"
        writer = request.state_writer
        stores: list[asyncio.Future[None]] = []
        finished = False

        def on_progress(note: Any) -> None:
            # A note arriving after the call ended (hard limit) must not overwrite its outcome.
            if writer is not None and not finished:
                state, meta = note
                stores.append(asyncio.ensure_future(writer(state, meta)))

        try:
            return await self._processes.run(
                _run_in_process,
                (ref, request.args, request.kwargs, self._child_fields(request)),
                {},
                soft_time_limit=soft,
                time_limit=hard,
                on_notify=on_progress,
            )
        finally:
            finished = True
            # Stored before the outcome is, so a late progress write cannot replace it.
            await asyncio.gather(*stores, return_exceptions=True)

    async def run_isolated(
        self,
        ref: str,
        request: Request,
        *,
        soft_time_limit: float | None,
        time_limit: float | None,
    ) -> Any:
        """Run the task importable as ``ref`` alone in a sandbox child, whatever its executor.

        Raises:
            ProcessLostError: the child died (``in_call`` says whether during the call).
            SandboxImportError: the child could not import ``ref``.
        """
        if self._sandbox is None:
            self._sandbox = ProcessPool(self.sandbox_size)
        return await self._sandbox.run(
            run_suspect,
            (ref, request.args, request.kwargs, request_fields(request)),
            {},
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
        )

    async def aclose(self) -> None:
        """Stop the pools: threads finish their current call; processes are terminated."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        for pool in (self._processes, self._sandbox):
            if pool is not None:
                await pool.aclose()
        self._processes = self._sandbox = None
