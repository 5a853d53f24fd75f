"""Tasks: what ``@app.task`` makes, how a call becomes a message, and the running task's context.

A :class:`Task` is generic over its function's parameters and return type, so
``await add.enqueue("a")`` on ``add(x: int, y: int) -> int`` is a type error and
``await (await add.enqueue(1, 2)).get()`` is an ``int``. Calling the task object directly
runs the function in-process, as in Celery.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, ParamSpec, TypeVar

from asyncq._task_message import SendPlan, build, send_plan
from asyncq._utils import backoff_delay, import_string, new_id, now, to_epoch, to_seconds
from asyncq.constructs import Group, chunks_group, map_signature
from asyncq.exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from asyncq.fair import fair_spec
from asyncq.flow.spec import check_rate_scope, concurrency_limit
from asyncq.message import Message
from asyncq.request import Delivered, Request, _current, current_task
from asyncq.result import AsyncResult
from asyncq.signature import Signature
from asyncq.states import State
from asyncq.sync import SyncResult, ensure_no_running_loop
from asyncq.sync import send as send_or_defer
from asyncq.unique.spec import unique_spec

if TYPE_CHECKING:
    from typing import TypeAlias

    from asyncq.app import App

    #: ``link`` / ``link_error`` values: a signature, its dict form, or a list of them.
    Links: TypeAlias = Signature[Any] | Mapping[str, Any] | Sequence[Signature[Any] | Mapping[str, Any]]

__all__ = ["AsyncTask", "Delivered", "Request", "SyncTask", "Task", "TaskOptions", "current_task"]

P = ParamSpec("P")
R = TypeVar("R")

EXECUTORS: Final = ("async", "thread", "process")
#: Tasks asyncq registers in every app that has tasks (they run task.map / starmap / chunks).
BUILTIN_TASKS: Final = frozenset({"asyncq.map", "asyncq.starmap"})
#: The send options of ``_build`` after args and kwargs (countdown ... link_error), all unset.
_NO_OPTIONS: Final = (None,) * 11


@dataclass(slots=True)
class TaskOptions:
    """The options of ``@app.task(...)``, with Celery's names and meaning; None means the app default."""

    name: str
    queue: str | None = None
    bind: bool = False
    max_retries: int | None = None
    default_retry_delay: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool | None = None
    acks_late: bool | None = None
    track_started: bool | None = None
    priority: int | None = None
    expires: float | timedelta | None = None
    serializer: str | None = None
    executor: str = "async"
    rate_limit: str | float | None = None
    rate_limit_scope: str | None = None  # "global" or "worker"; None: task_default_rate_limit_scope
    concurrency_key: str | Callable[..., Any] | None = None  # docs/flow-control.md
    max_concurrency: int | None = None
    encrypt: bool | None = None  # seal arguments and results (docs/security.md); None: security_encrypt
    unique: bool = False  # at most one copy queued or running per call (docs/flow-control.md)
    unique_key: str | Callable[..., Any] | None = None  # the lock's key: an argument name or a callable
    unique_ttl: float | None = None  # seconds the lock lasts at most; None: task_unique_ttl
    fair_key: str | Callable[..., Any] | None = None  # tenant of a call, served in turn with the others
    fair_weights: Mapping[str, int] | None = None  # fair key -> weight (default 1)

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """Names accepted by ``@app.task``."""
        return tuple(cls.__dataclass_fields__)


def parse_rate_limit(value: str | float | None) -> float | None:
    """Parse Celery's rate-limit syntax ("10/s", "100/m", "1000/h", or a number per second)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        rate = float(value)
    else:
        amount, _, unit = value.partition("/")
        per = {"s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}.get(unit.strip())
        try:
            if per is None:
                raise ValueError(unit)
            rate = float(amount) / per
        except ValueError:
            raise ConfigurationError(
                f"invalid rate_limit {value!r}; use e.g. '10/s', '100/m' or '1000/h'"
            ) from None
    if rate <= 0:
        raise ConfigurationError(f"invalid rate_limit {value!r}: must be positive")
    return rate


def _validate(options: TaskOptions, is_async: bool) -> None:
    if options.executor not in EXECUTORS:
        raise ConfigurationError(
            f"task {options.name!r}: executor must be one of {EXECUTORS}, not {options.executor!r}"
        )
    if is_async and options.executor != "async":
        raise ConfigurationError(
            f"task {options.name!r} is an async def; it runs on the event loop (executor='async'), "
            f"not executor={options.executor!r}"
        )
    if not is_async and options.executor == "async":
        options.executor = "thread"
    if options.priority is not None and not 0 <= options.priority <= 9:
        raise ConfigurationError(f"task {options.name!r}: priority must be 0-9, not {options.priority}")
    for limit in ("time_limit", "soft_time_limit"):
        value = getattr(options, limit)
        if value is not None and value <= 0:
            raise ConfigurationError(f"task {options.name!r}: {limit} must be positive, not {value}")
    parse_rate_limit(options.rate_limit)
    check_rate_scope(options.name, options.rate_limit_scope)


class Task(Generic[P, R]):
    """A registered task. Use ``await task.enqueue(...)`` to run it on a worker."""

    def __init__(self, app: App, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.run = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        _validate(options, self.is_async)
        self.options = options
        self.name = options.name
        self.rate = parse_rate_limit(options.rate_limit)
        self.concurrency = concurrency_limit(
            options.name, fn, options.concurrency_key, options.max_concurrency, bind=options.bind
        )
        self.unique = unique_spec(
            options.name,
            fn,
            unique=options.unique,
            key=options.unique_key,
            ttl=options.unique_ttl,
            bind=options.bind,
        )
        self.fair = fair_spec(options.name, fn, options.fair_key, options.fair_weights, bind=options.bind)
        self._send_plan: SendPlan | None = None
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.__module__ = fn.__module__
        self.__qualname__ = fn.__qualname__
        self.__name__ = getattr(fn, "__name__", options.name)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        # Pickled by reference: the process executor ships the task, not its code.
        return import_string, (f"{self.__module__}:{self.__qualname__}",)

    # -- running context -------------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The context of the call running now (per coroutine/thread, via a contextvar)."""
        entry = _current.get()
        if entry is None or entry[0] is not self:
            return Request(id="", task=self.name, is_eager=True)
        return entry[1]

    def is_revoked(self) -> bool:
        """Whether the running call was revoked with ``terminate=True`` (a thread task polls it to stop)."""
        entry = _current.get()
        return entry is not None and entry[1].revoked

    def _eager_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = Request(id=new_id(), task=self.name, args=list(args), kwargs=dict(kwargs), is_eager=True)
        if self.is_async:

            async def run() -> Any:
                token = _current.set((self, request))
                try:
                    return await self._invoke(args, kwargs)
                finally:
                    _current.reset(token)

            return run()
        token = _current.set((self, request))
        try:
            return self._invoke(args, kwargs)
        finally:
            _current.reset(token)

    def _invoke(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Call the function, passing ``self`` first for bound tasks."""
        if self.options.bind:
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    # -- sending ----------------------------------------------------------------------------

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments; return a handle on its result.

        ``connection=conn`` (an asyncpg connection, postgresql:// broker) writes the job in
        ``conn``'s transaction: it runs only if that commits. It is an option, not a task
        argument, unless the task's function has a parameter named ``connection``; type
        checkers know it only on :meth:`apply_async`.
        """
        if "connection" in kwargs and not self._takes_connection:
            options = dict(kwargs)
            connection = options.pop("connection")
            return await self.apply_async(args, options, connection=connection)
        plan = send_plan(self)
        if plan.eager or self.unique is not None:
            return await self.apply_async(args, kwargs)
        # apply_async's path in a running loop, less its deferred-send handle: the same message,
        # sent by the same call, and the same result handle.
        message = build(self, plan, args, kwargs, *_NO_OPTIONS)
        result: AsyncResult[R] = await self.app.send_message(message, task_name=self.name)
        return result

    @functools.cached_property
    def _takes_connection(self) -> bool:
        try:
            return "connection" in inspect.signature(self.run).parameters
        except (TypeError, ValueError):  # no signature (a builtin): nothing to clash with
            return False

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Send the task from sync code and return a blocking handle: ``add.delay(4, 4).get()``.

        Celery's ``delay``, for code with no running event loop (see docs/sync.md); in async
        code, ``await add.enqueue(4, 4)``.

        Raises:
            asyncq.exceptions.BlockingCallError: this thread runs an event loop.
        """
        ensure_no_running_loop(f"{self.__name__}.delay()", f"`await {self.__name__}.enqueue(...)`")
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        link: Links | None = None,
        link_error: Links | None = None,
        connection: Any = None,
    ) -> SyncResult[R]:
        """Send the task with explicit options (Celery's names); return a handle on its result.

        In async code ``await task.apply_async(...)`` sends it and gives the
        :class:`~asyncq.result.AsyncResult`. With no event loop running in the thread it
        sends at once and returns a blocking :class:`~asyncq.sync.SyncResult`
        (``task.apply_async((4, 4), countdown=5).get()``).

        ``countdown`` and ``expires`` are seconds (or a timedelta) from now; ``eta`` and
        ``expires`` also take an aware datetime. ``priority`` is 0 (lowest) to 9.
        ``link`` signatures run with the result prepended once the task succeeds;
        ``link_error`` signatures run with ``(task_id, {"type": ..., "message": ...})``
        prepended if it fails (see docs/canvas.md).
        ``connection`` writes the job in that database connection's transaction (see
        :meth:`enqueue`); it needs a running event loop.
        """
        plan = send_plan(self)
        message = build(
            self,
            plan,
            args,
            kwargs,
            countdown,
            eta,
            expires,
            priority,
            queue,
            task_id,
            headers,
            serializer,
            ignore_result,
            link,
            link_error,
        )
        app = self.app
        handle: AsyncResult[R] = AsyncResult(message.id, app, task_name=self.name)
        if plan.eager:
            sig = self.signature(
                message.args, message.kwargs, task_id=message.id, link=link, link_error=link_error
            )
            return app.apply_eagerly(handle, sig)
        if self.unique is not None:
            from asyncq.unique.send import send_unique  # the lock store, only for unique tasks

            key = self.unique.key(self.name, tuple(message.args), message.kwargs)
            ttl = app.conf.task_unique_ttl if self.unique.ttl is None else self.unique.ttl
            return send_or_defer(
                app, handle, lambda: send_unique(app, message, handle, key, ttl, connection=connection)
            )
        return send_or_defer(
            app, handle, lambda: app.send_message(message, task_name=self.name, connection=connection)
        )

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> SyncResult[R]:
        """Run the task here and now, as eager mode does, whatever the settings (Celery's ``apply``).

        Returns a finished handle (``get()`` gives the result or raises the task's error); in
        async code, ``await task.apply(...)`` gives it. Nothing is sent or stored.
        """
        message = self.build_message(args, kwargs)
        handle: AsyncResult[R] = AsyncResult(message.id, self.app, task_name=self.name)
        sig = self.signature(message.args, message.kwargs, task_id=message.id)
        return self.app.apply_eagerly(handle, sig)

    def build_message(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        link: Links | None = None,
        link_error: Links | None = None,
    ) -> Message:
        """Build (not send) the message for one call, applying task and app defaults."""
        return build(
            self,
            send_plan(self),
            args,
            kwargs,
            countdown,
            eta,
            expires,
            priority,
            queue,
            task_id,
            headers,
            serializer,
            ignore_result,
            link,
            link_error,
        )

    # -- canvas ------------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A partial signature: in a chain or as a callback, the parent's result is prepended."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: it ignores the parent's result."""
        return self.signature(args, kwargs, immutable=True)

    def signature(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature[R]:
        """A signature of this task with send ``options`` (``apply_async``'s names)."""
        return Signature(self.name, args, kwargs, options, immutable=immutable, app=self.app)

    def map(self, it: Iterable[Any]) -> Signature[list[R]]:
        """One message that calls the task on each item of ``it`` on one worker: ``[task(x) ...]``."""
        return map_signature(self, it, star=False)

    def starmap(self, it: Iterable[Iterable[Any]]) -> Signature[list[R]]:
        """One message that calls ``task(*args)`` for each ``args`` of ``it`` on one worker."""
        return map_signature(self, it, star=True)

    def chunks(self, it: Iterable[Iterable[Any]], n: int) -> Group:
        """A group of starmaps over ``n`` items of ``it`` each: many calls in few messages."""
        return chunks_group(self, it, n)

    @property
    def ignores_result(self) -> bool:
        """Whether results of this task are stored (task option, else the app setting)."""
        ignore = self.options.ignore_result
        return bool(self.app.conf.task_ignore_result if ignore is None else ignore)

    # -- inside a running task ---------------------------------------------------------------

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Ask the worker to run this task again later; raises :class:`~asyncq.exceptions.Retry`.

        Write ``raise self.retry(exc=exc)`` so the intent reads at the call site. Past
        ``max_retries`` the original ``exc`` is raised (or MaxRetriesExceededError).
        """
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"task {self.name}[{request.id}] exceeded max_retries={limit}")
        if eta is not None:
            when = max(0.0, (to_epoch(eta) or 0.0) - now())
        elif countdown is not None:
            when = to_seconds(countdown) or 0.0
        else:
            when = self.retry_delay(request.retries)
        raise Retry(exc=exc, when=when)

    @property
    def max_retries(self) -> int | None:
        """The task's max_retries, else the app's task_max_retries (None: retry forever)."""
        value = self.options.max_retries
        return self.app.conf.task_max_retries if value is None else value

    def retry_delay(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1``: backoff if configured, else the fixed delay."""
        backoff = self.options.retry_backoff
        if backoff:
            base = 1.0 if backoff is True else float(backoff)
            return backoff_delay(
                retries, base=base, maximum=self.options.retry_backoff_max, jitter=self.options.retry_jitter
            )
        delay = self.options.default_retry_delay
        return float(self.app.conf.task_default_retry_delay if delay is None else delay)

    def update_state(
        self, state: State | str = State.STARTED, meta: dict[str, Any] | None = None
    ) -> Awaitable[None]:
        """Store a custom state and progress ``meta`` for the running task.

        In an async task, ``await self.update_state(...)``. In a sync task running in the
        worker's thread pool, the call stores the state before returning (awaiting the
        returned value there is unnecessary).
        """
        request = self.request
        writer = request.state_writer
        if writer is None:
            return _done()  # eager call or process executor without a writer: nothing to record
        loop = request.loop
        # Asked of the running loop, not of loop._thread_id: uvloop's loops have no such attribute.
        in_loop_thread = loop is not None and _running_loop() is loop
        if loop is None or in_loop_thread:
            return writer(state, meta)
        asyncio.run_coroutine_threadsafe(_as_coroutine(writer(state, meta)), loop).result()
        return _done()


class _Done:
    """An already-finished awaitable: awaiting it is optional, forgetting to is harmless."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


def _done() -> _Done:
    return _Done()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


class AsyncTask(Task[P, R]):
    """A task made from an ``async def``: calling it returns a coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        result: Coroutine[Any, Any, R] = self._eager_call(args, kwargs)
        return result


class SyncTask(Task[P, R]):
    """A task made from a plain ``def``: calling it runs the function."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._eager_call(args, kwargs)
        return result
