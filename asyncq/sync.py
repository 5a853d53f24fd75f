"""The sync facade: blocking calls for code with no running event loop (scripts, Django, Flask).

``add.delay(4, 4).get()``, ``add.apply_async(...)`` and ``chain(...).delay()`` work from plain
threads. Their I/O runs on one event loop per process, in a daemon thread named
``asyncq.sync`` started by the first blocking call; each app opens its broker and backend on
that loop once and every later call, from any thread, reuses them. The loop is closed at
interpreter exit, and forgotten in a child after ``fork()`` (the child starts its own on its
first call and never touches the parent's connections).

``apply_async`` serves both worlds: with no loop running in the calling thread it sends at
once and returns a blocking :class:`SyncResult`; in a running loop it sends nothing until
awaited (``await add.apply_async(...)`` gives the :class:`~asyncq.result.AsyncResult`, as
before). A blocking call made in a running loop raises :class:`~asyncq.exceptions.BlockingCallError`
at once, naming the awaitable to use, instead of deadlocking the loop. See docs/sync.md.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from asyncq.exceptions import BlockingCallError
from asyncq.exceptions import TimeoutError as CallTimeoutError
from asyncq.result import AsyncResult, GroupResult
from asyncq.states import State

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "CLOSE_DEADLINE",
    "SEND_DEADLINE",
    "SyncGroupResult",
    "SyncResult",
    "blocking",
    "close_app",
    "ensure_no_running_loop",
    "is_loop_running",
    "run_blocking_calls_on",
    "send",
    "send_group",
]

T = TypeVar("T")
R = TypeVar("R")

#: Seconds a blocking send may take, connecting included, before it fails.
SEND_DEADLINE: Final = 60.0
#: Seconds the interpreter-exit clean-up may take to close every app's connections.
CLOSE_DEADLINE: Final = 10.0


def is_loop_running() -> bool:
    """True if the calling thread runs an event loop (so it must not block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def ensure_no_running_loop(call: str, instead: str) -> None:
    """Raise BlockingCallError if this thread runs an event loop: ``call`` would block it.

    Args:
        call: the blocking call, as the user wrote it (``"add.delay()"``).
        instead: the awaitable to use in async code (``"await add.enqueue(...)"``).
    """
    if is_loop_running():
        raise BlockingCallError(
            f"{call} blocks the thread, and this thread runs an event loop; in async code use {instead}"
        )


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop when installed: its cross-thread wake-up is cheaper, and every blocking call pays one.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _wait(future: concurrent.futures.Future[T], timeout: float | None) -> T:
    """The coroutine's value, or its exception; a deadline of ours cancels it."""
    try:
        return future.result(timeout)
    except BaseException as exc:
        if future.done() and not future.cancelled() and future.exception() is exc:
            raise  # the coroutine's own error (asyncq's TimeoutError from get() among them)
        future.cancel()  # our deadline, or e.g. KeyboardInterrupt in the caller: stop the work
        if isinstance(exc, concurrent.futures.TimeoutError):
            raise CallTimeoutError(f"the blocking call did not finish within {timeout}s") from None
        raise


class _LoopThread:
    """One event loop in a daemon thread, running the blocking calls' coroutines."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = _new_loop()
        #: Apps whose drivers were opened on this loop, closed with it.
        self.apps: weakref.WeakSet[App] = weakref.WeakSet()
        self.thread = threading.Thread(target=self._run, name="asyncq.sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, app: App, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coroutine`` on the loop and block until it is done (or ``timeout`` passes)."""
        self.apps.add(app)
        return _wait(asyncio.run_coroutine_threadsafe(coroutine, self.loop), timeout)

    def close(self, timeout: float) -> None:
        """Close every app's connections on the loop, then stop the loop and its thread."""
        if not self.thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(_close_all(list(self.apps)), self.loop)
        with contextlib.suppress(Exception):  # exiting: a broken connection must not stop the exit
            future.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


async def _close_all(apps: list[App]) -> None:
    for app in apps:
        with contextlib.suppress(Exception):
            await app.aclose()
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


# One loop thread per process: it is what the facade shares between threads. The lock makes
# 50 threads' first calls start one thread; both are replaced in a child after fork().
_lock = threading.Lock()
_runner: _LoopThread | None = None
# The parent's loops, kept referenced in a child so that collecting them never closes (or
# says goodbye on) connections that still belong to the parent.
_abandoned: list[_LoopThread] = []


def _get_runner() -> _LoopThread:
    global _runner
    runner = _runner
    if runner is not None:
        return runner
    with _lock:
        if _runner is None:
            _runner = _LoopThread()
        return _runner


def _after_fork_in_child() -> None:
    global _runner, _lock
    _lock = threading.Lock()  # it may have been held by a thread that does not exist here
    if _runner is not None:
        _abandoned.append(_runner)
        _runner = None


def _close_at_exit() -> None:
    runner = _runner
    if runner is not None and runner.pid == os.getpid():
        runner.close(CLOSE_DEADLINE)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)


# Apps whose blocking calls run on a given loop instead of the sync loop: memory:// drivers
# live in one loop (their wake-ups are not thread-safe), so they go where the worker runs.
_home_loops: weakref.WeakKeyDictionary[App, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def run_blocking_calls_on(app: App, loop: asyncio.AbstractEventLoop | None) -> None:
    """Send ``app``'s blocking calls to ``loop`` (a running loop in another thread); None undoes it.

    For a ``memory://`` app whose worker runs in ``loop`` (a test, a web server embedding the
    worker): sync code in other threads then reaches the same in-memory queues safely. The
    pytest plugin's ``asyncq_worker`` fixture and the framework integrations do it for you.
    """
    if loop is None:
        _home_loops.pop(app, None)
    else:
        _home_loops[app] = loop


def blocking(app: App, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coroutine`` on the process's sync loop (started if need be) and return its value.

    The caller must not run an event loop (check with :func:`ensure_no_running_loop` first,
    to name the right awaitable in the error).
    """
    if is_loop_running():
        coroutine.close()
        raise BlockingCallError("a blocking asyncq call was made in a thread that runs an event loop")
    home = _home_loops.get(app)
    if home is not None and home.is_running():
        return _wait(asyncio.run_coroutine_threadsafe(coroutine, home), timeout)
    return _get_runner().run(app, coroutine, timeout)


def close_app(app: App) -> None:
    """Close ``app``'s connections on the sync loop now; the next blocking call reopens them.

    Interpreter exit does this for every app; call it where an app's lifetime ends earlier
    (a test's teardown, a web framework's shutdown hook). A no-op if the app never blocked.
    """
    ensure_no_running_loop("asyncq.sync.close_app()", "`await app.aclose()`")
    runner = _runner
    if runner is None or app not in runner.apps or not runner.thread.is_alive():
        return
    runner.run(app, app.aclose(), CLOSE_DEADLINE)
    runner.apps.discard(app)


async def _send_then_return(send: Callable[[], Awaitable[object]], result: T) -> T:
    await send()
    return result


class SyncResult(Coroutine[Any, Any, AsyncResult[R]], Generic[R]):
    """A blocking handle on a task's outcome: ``add.delay(4, 4).get(timeout=10)``.

    What ``delay()`` and ``apply_async()`` return. Its methods block the calling thread
    (Celery's ``AsyncResult``): ``get``, ``state``, ``ready()``, ``successful()``,
    ``failed()``, ``forget()``. Made by ``apply_async`` in a running event loop, it is
    instead an awaitable that sends the task: ``await add.apply_async(...)`` gives the
    :class:`~asyncq.result.AsyncResult` (and ``asyncio.create_task`` accepts it).
    """

    __slots__ = ("_pending", "async_result")

    def __init__(
        self, result: AsyncResult[R], pending: Coroutine[Any, Any, AsyncResult[R]] | None = None
    ) -> None:
        #: The async handle: ``await result.async_result.get()`` in async code.
        self.async_result = result
        self._pending = pending

    def __repr__(self) -> str:
        return f"<SyncResult {self.id}{' (not sent: await it)' if self._pending is not None else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- the awaitable side (made in a running loop) ------------------------------------------

    def _coroutine(self) -> Coroutine[Any, Any, AsyncResult[R]]:
        if self._pending is None:  # already sent: awaiting it just hands back the async handle
            self._pending = _send_then_return(_nothing, self.async_result)
        return self._pending

    def __await__(self) -> Generator[Any, None, AsyncResult[R]]:
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        """Coroutine protocol (for ``asyncio.create_task``)."""
        return self._coroutine().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Coroutine protocol (for ``asyncio.create_task``)."""
        return self._coroutine().throw(typ, val, tb)

    def close(self) -> None:
        """Coroutine protocol: drop an unsent send."""
        if self._pending is not None:
            self._pending.close()

    # -- the blocking side ---------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The task id (a group id for a group)."""
        return self.async_result.id

    @property
    def task_name(self) -> str | None:
        """The task's registered name, when known."""
        return self.async_result.task_name

    @property
    def app(self) -> App:
        """The app the result is read through."""
        return self.async_result.app

    @property
    def parent(self) -> SyncResult[Any] | None:
        """The previous step's handle in a chain, if any."""
        parent = self.async_result.parent
        return None if parent is None else _wrap(parent)

    def _call(self, method: str, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._pending is not None and getattr(self._pending, "cr_frame", True) is not None:
            coroutine.close()
            raise BlockingCallError(
                f"this result's task is not sent: in a running event loop apply_async() returns an "
                f"awaitable; write `result = await task.apply_async(...)`, then `await result.{method}`"
            )
        if is_loop_running():
            coroutine.close()
            raise BlockingCallError(
                f"SyncResult.{method} blocks the thread, and this thread runs an event loop; in async "
                f"code use `await result.async_result.{method}`"
            )
        return blocking(self.app, coroutine, timeout)

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """Block until the task finishes and return its result (Celery's ``get``).

        Raises:
            asyncq.exceptions.TimeoutError: ``timeout`` seconds passed first.
            the task's exception: the task failed (``propagate=False`` returns it instead).
        """
        return self._call("get()", self.async_result.get(timeout, propagate=propagate))

    def wait(self, timeout: float | None = None, *, propagate: bool = True) -> R:
        """The same as :meth:`get` (Celery's older name)."""
        return self.get(timeout, propagate=propagate)

    @property
    def state(self) -> State:
        """The task's current state (a blocking read); PENDING when nothing is known of it."""
        return self._call("state()", self.async_result.state(), SEND_DEADLINE)

    status = state

    @property
    def info(self) -> Any:
        """The result if finished, the exception if failed, the progress meta otherwise."""
        return self._call("info()", self.async_result.info(), SEND_DEADLINE)

    result = info

    def ready(self) -> bool:
        """True once the task has finished (successfully or not) or was revoked."""
        return self._call("ready()", self.async_result.ready(), SEND_DEADLINE)

    def successful(self) -> bool:
        """True if the task finished successfully."""
        return self._call("successful()", self.async_result.successful(), SEND_DEADLINE)

    def failed(self) -> bool:
        """True if the task finished with an exception."""
        return self._call("failed()", self.async_result.failed(), SEND_DEADLINE)

    def forget(self) -> None:
        """Delete the task's record from the result backend."""
        self._call("forget()", self.async_result.forget(), SEND_DEADLINE)


class SyncGroupResult(SyncResult[list[Any]]):
    """A blocking handle on a group: ``get()`` gives the members' results in order.

    ``await group(...).apply_async()`` in a running loop gives the
    :class:`~asyncq.result.GroupResult`.
    """

    __slots__ = ()

    async_result: GroupResult

    def __init__(self, result: GroupResult, pending: Coroutine[Any, Any, GroupResult] | None = None) -> None:
        super().__init__(result, pending)

    def __await__(self) -> Generator[Any, None, GroupResult]:
        result: Generator[Any, None, GroupResult] = self._coroutine().__await__()  # type: ignore[assignment]
        return result

    @property
    def results(self) -> list[SyncResult[Any]]:
        """One blocking handle per member, in order."""
        return [_wrap(result) for result in self.async_result.results]

    def __len__(self) -> int:
        return len(self.async_result.results)

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return self._call("completed_count()", self.async_result.completed_count(), SEND_DEADLINE)


def _wrap(result: AsyncResult[Any]) -> SyncResult[Any]:
    return SyncGroupResult(result) if isinstance(result, GroupResult) else SyncResult(result)


async def _nothing() -> None:
    return None


def send(app: App, result: AsyncResult[R], sender: Callable[[], Awaitable[object]]) -> SyncResult[R]:
    """Send now and return a blocking handle, or, in a running loop, an awaitable that sends.

    ``sender`` makes the coroutine that publishes (on whichever loop runs it); ``result`` is
    the handle of what it publishes, known before anything is sent.
    """
    if is_loop_running():
        return SyncResult(result, _unsent(sender, result))
    blocking(app, _as_coroutine(sender), SEND_DEADLINE)
    return SyncResult(result)


def send_group(app: App, result: GroupResult, sender: Callable[[], Awaitable[object]]) -> SyncGroupResult:
    """:func:`send` for a group: the handle is a :class:`SyncGroupResult`."""
    if is_loop_running():
        return SyncGroupResult(result, _unsent(sender, result))
    blocking(app, _as_coroutine(sender), SEND_DEADLINE)
    return SyncGroupResult(result)


def _unsent(sender: Callable[[], Awaitable[object]], result: T) -> Coroutine[Any, Any, T]:
    coroutine: types.CoroutineType[Any, Any, T] = _send_then_return(sender, result)  # type: ignore[assignment]
    # Python's "coroutine ... was never awaited" warning names this: say what was not sent.
    coroutine.__qualname__ = coroutine.__name__ = "apply_async"
    return coroutine


async def _as_coroutine(sender: Callable[[], Awaitable[object]]) -> None:
    await sender()
