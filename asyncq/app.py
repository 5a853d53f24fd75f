"""App: configuration, the task registry, the lazily opened broker and backend, and workers."""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast, overload
from urllib.parse import quote

from asyncq import _send_path
from asyncq._connect import with_connect_timeout
from asyncq.backends import BACKENDS, ResultBackend, backend_from_url
from asyncq.brokers import Broker, OutgoingMessage, broker_from_url
from asyncq.config import Conf
from asyncq.eager import apply_eagerly
from asyncq.exceptions import ConfigurationError, NotRegistered
from asyncq.message import Message
from asyncq.outbox import Outbox
from asyncq.result import AsyncResult
from asyncq.serializers import Serializers
from asyncq.signature import Signature
from asyncq.sync import SyncResult
from asyncq.task import AsyncTask, SyncTask, Task, TaskOptions
from asyncq.workflow import register_builtins

if TYPE_CHECKING:
    from typing import Concatenate

    from asyncq.beat_schedule import BeatSchedule
    from asyncq.control import Control
    from asyncq.deadletters import DeadLetters
    from asyncq.events import Events
    from asyncq.security import MessageSecurity
    from asyncq.worker.worker import Worker

__all__ = ["App", "default_store_url", "resolve_sqlite_url"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns for unbound tasks."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What ``@app.task(bind=True, ...)`` returns: the function's first parameter is the task."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> SyncTask[P, R]: ...


def default_store_url(app_name: str) -> str:
    """The embedded default store: one SQLite file per app name, per user.

    It lives in the user's state directory rather than the current directory, so a worker
    and a producer started in different terminals (and folders) find the same queue.
    """
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "asyncq"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in app_name) or "asyncq"
    return f"sqlite:///{base / safe}.sqlite3"


def resolve_sqlite_url(url: str, root: Path | None) -> str:
    """Make a relative ``sqlite:///path`` absolute, relative to ``root`` (None: the current directory).

    A relative path resolved against the current directory would give a producer and a worker
    started in different folders two separate stores, each silently waiting for the other.
    """
    scheme, sep, rest = url.partition(":///")
    if scheme.lower() != "sqlite" or not sep or rest.startswith(("/", ":memory:")) or not rest:
        return url
    path, query_sep, query = rest.partition("?")
    # The path is URL-encoded already; the directory is not (a '%', '#' or '?' in it would break).
    base = quote(str(root or os.getcwd()))
    return f"sqlite:///{os.path.normpath(os.path.join(base, path))}{query_sep}{query}"


def _defining_dir() -> Path | None:
    """The directory of the first file outside asyncq on the call stack: where the App is made."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != "asyncq" and not name.startswith("asyncq."):
            file = frame.f_globals.get("__file__")
            return Path(file).resolve().parent if isinstance(file, str) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Drivers:
    """The broker and backend of one app on one event loop (connections are loop-bound)."""

    def __init__(self, broker: Broker, backend: ResultBackend, outbox: Outbox | None) -> None:
        self.broker = broker
        self.backend = backend
        self.outbox = outbox  # with the outbox_url setting
        self.connected = False
        self.lock = asyncio.Lock()


class App:
    """An asyncq application: tasks, settings, broker and result backend.

    Args:
        main: the app's name, used for the default store and as the task-name prefix
            of tasks defined in ``__main__``.
        broker: broker URL; else the ``broker_url`` setting (``ASYNCQ_BROKER_URL``), else
            the embedded SQLite store.
        backend: result backend URL; else ``result_backend`` (``ASYNCQ_RESULT_BACKEND``),
            else the broker's URL when a backend serves its scheme, rpc:// for AMQP, else the embedded store.
        config: settings to apply (a mapping).

    A relative SQLite path (``sqlite:///asyncq.db``) is relative to the directory of the
    file that creates the app, not to the current directory, so every process loading the
    app finds the same store.
    """

    def __init__(
        self,
        main: str = "asyncq",
        *,
        broker: str | None = None,
        backend: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.main = main
        self.root_path = _defining_dir()  # relative SQLite paths are resolved against it
        self.conf = Conf(config)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.tasks: dict[str, Task[Any, Any]] = {}
        register_builtins(self)  # so any worker of this app runs map / starmap / chunks messages
        self._serializers: Serializers | None = None
        self._security: MessageSecurity | None = None
        self._drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Drivers] = (
            weakref.WeakKeyDictionary()
        )
        self._shared_drivers: _Drivers | None = None  # memory:// drivers hold state: one per app
        self._beat_schedule: BeatSchedule | None = None
        self._dead_letters: DeadLetters | None = None
        self._events: Events | None = None
        self._control: Control | None = None
        self._closers: dict[asyncio.AbstractEventLoop, list[Callable[[], Awaitable[None]]]] = {}
        # Producer hooks, resolved at connect (not per message: reading conf costs microseconds).
        self._stamp_sent = False
        #: Called with each message before it is encoded (tracing injects its context here).
        self.publish_hook: Callable[[Message], None] | None = None

    def __repr__(self) -> str:
        return f"<App {self.main}>"

    # -- configuration -------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL in force."""
        return resolve_sqlite_url(str(self.conf.broker_url or default_store_url(self.main)), self.root_path)

    @property
    def backend_url(self) -> str:
        """The result-backend URL in force.

        Unset, it follows the broker: the same URL when a backend driver serves the broker's
        scheme (sqlite, redis, memory...), ``rpc://`` for an AMQP broker, else the embedded store.
        """
        url = self.conf.result_backend
        if url:
            return resolve_sqlite_url(str(url), self.root_path)
        broker = self.broker_url
        scheme = broker.partition("://")[0].lower()
        if scheme in BACKENDS:
            return broker
        if scheme in ("amqp", "amqps"):
            return "rpc://"
        return default_store_url(self.main)

    def config_from_object(self, obj: object | str) -> None:
        """Load settings from an object or module (its attributes named like settings)."""
        self.conf.from_object(obj)
        self._serializers = None
        self._security = None

    @property
    def serializers(self) -> Serializers:
        """The serializers this app encodes with and accepts (from ``accept_content``)."""
        if self._serializers is None:
            serializers = Serializers(self.conf.accept_content)
            serializers.cipher = self.security.cipher
            self._serializers = serializers
        return self._serializers

    @property
    def security(self) -> MessageSecurity:
        """Signing, encryption and limits from the ``security_*`` and ``message_max_*`` settings."""
        if self._security is None:
            from asyncq.security import MessageSecurity

            self._security = MessageSecurity.from_conf(self.conf)
        return self._security

    def route(self, task_name: str, task_queue: str | None = None) -> str:
        """The queue of a task: ``task_routes`` first, then the task's own, then the default."""
        routes = self.conf.task_routes
        routed = routes.get(task_name) if isinstance(routes, Mapping) else None
        if isinstance(routed, Mapping):
            routed = routed.get("queue")
        return str(routed or task_queue or self.conf.task_default_queue)

    # -- tasks -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...

    def task(  # type: ignore[misc]  # mypy cannot match **options against the keyword-only overloads
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue="fast", ...)``.

        Options take Celery's names (see :class:`~asyncq.task.TaskOptions`); an unknown
        option is an error.
        """
        options["bind"] = bind
        unknown = set(options) - set(TaskOptions.known())
        if unknown:
            known = ", ".join(sorted(TaskOptions.known()))
            raise ConfigurationError(f"unknown task option(s) {', '.join(sorted(unknown))}; known: {known}")

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            name = options.get("name") or self._task_name(func)
            task_options = TaskOptions(**{**options, "name": name})
            cls = AsyncTask if asyncio.iscoroutinefunction(func) else SyncTask
            task: Task[Any, Any] = cls(self, func, task_options)
            if name in self.tasks and self.tasks[name].run is not func:
                raise ConfigurationError(f"a different task is already registered as {name!r}")
            self.tasks[name] = task
            return task

        return register(fn) if fn is not None else register

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = fn.__module__
        if module in ("__main__", "__mp_main__"):
            module = self.main  # scripts: name tasks after the app, so a worker can resolve them
        return f"{module}.{fn.__qualname__}"

    def periodic(
        self,
        schedule: object,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        catch_up: Literal["skip", "once"] = "skip",
        **task_options: Any,
    ) -> TaskDecorator:
        """Define a task and run it on ``schedule``: ``@app.periodic(crontab(minute="*/15"))``.

        ``schedule`` is a crontab, an interval, a timedelta or seconds; ``args``/``kwargs`` are
        passed at every tick; ``catch_up`` is the missed-ticks policy (see docs/scheduling.md).
        The other options are :meth:`task`'s; the entry is named after the task.
        """
        from asyncq.beat_entries import Entry

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            name = task_options.get("name") or self._task_name(fn)
            # Validate the entry before registering the task, so a bad schedule leaves no trace.
            entry = Entry.build(name, name, schedule, args=args, kwargs=kwargs, catch_up=catch_up)
            task: Task[Any, Any] = self.task(**task_options)(fn)
            self.schedule.add_static(entry)
            return task

        return register  # type: ignore[return-value]  # TaskDecorator's overloads describe it

    @property
    def schedule(self) -> BeatSchedule:
        """The periodic entries: ``await app.schedule.add(...)``, ``remove``, ``entries``."""
        if self._beat_schedule is None:
            from asyncq.beat_schedule import BeatSchedule

            self._beat_schedule = BeatSchedule(self)
        return self._beat_schedule

    @property
    def dead_letters(self) -> DeadLetters:
        """The dead-letter tools: ``await app.dead_letters.list()``, ``show``, ``requeue``, ``purge``."""
        if self._dead_letters is None:
            from asyncq.deadletters import DeadLetters

            self._dead_letters = DeadLetters(self)
        return self._dead_letters

    @property
    def events(self) -> Events:
        """Monitoring events: ``app.events.stream()`` yields them (see docs/monitoring.md)."""
        if self._events is None:
            from asyncq.events import Events

            self._events = Events(self)
        return self._events

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(f"no task named {name!r} is registered in app {self.main!r}") from None

    # -- drivers -----------------------------------------------------------------------------

    def _current_drivers(self) -> _Drivers:
        if self._shared_drivers is not None:
            return self._shared_drivers
        loop = asyncio.get_running_loop()
        drivers = self._drivers.get(loop)
        if drivers is None:
            timeout = self.conf.broker_connection_timeout
            broker = broker_from_url(
                self.broker_url,
                **with_connect_timeout(self.broker_url, self.conf.broker_transport_options, timeout),
            )
            options = with_connect_timeout(
                self.backend_url, self.conf.result_backend_transport_options, timeout
            )
            if self.backend_url.startswith("rpc:"):
                options.setdefault("broker_url", self.broker_url)
            backend = backend_from_url(self.backend_url, **options)
            outbox = None if self.conf.outbox_url is None else Outbox(self.conf.outbox_url)
            drivers = _Drivers(broker, backend, outbox)
            if self.broker_url.startswith("memory:") or self.backend_url.startswith("memory:"):
                self._shared_drivers = drivers
            else:
                self._drivers[loop] = drivers
        return drivers

    @property
    def outbox(self) -> Outbox | None:
        """The transactional outbox of the running loop (the ``outbox_url`` setting), or None."""
        return self._current_drivers().outbox

    @property
    def broker(self) -> Broker:
        """This loop's broker (connect it with ``await app.connect()``)."""
        return self._current_drivers().broker

    @property
    def backend(self) -> ResultBackend:
        """This loop's result backend (connect it with ``await app.connect()``)."""
        return self._current_drivers().backend

    @property
    def control(self) -> Control:
        """Remote control of the workers: ping, inspect, revoke, rate_limit... (asyncq.control)."""
        if self._control is None:
            from asyncq.control import Control  # control builds on app: import when used

            self._control = Control(self)
        return self._control

    async def connect(self) -> None:
        """Connect the broker and backend of the running loop; idempotent and cheap."""
        drivers = self._current_drivers()
        if drivers.connected:
            return
        async with drivers.lock:
            if not drivers.connected:
                await drivers.broker.connect()
                await drivers.backend.connect()
                if drivers.outbox is not None:
                    await drivers.outbox.connect()
                self._prepare_publishing()
                drivers.connected = True

    def _prepare_publishing(self) -> None:
        self._stamp_sent = bool(self.conf.task_send_sent_time)
        if self.conf.tracing and self.publish_hook is None:
            from asyncq.tracing import instrument  # an optional extra: imported only when enabled

            instrument(self)

    async def aclose(self) -> None:
        """Close this loop's broker and backend."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for closer in self._closers.pop(loop, []):
            await closer()
        if self._events is not None:
            await self._events.aclose()
        if self._control is not None:
            await self._control.aclose()
        drivers = self._drivers.pop(loop, None) or self._shared_drivers
        if drivers is not None and drivers.connected:
            drivers.connected = False
            await drivers.broker.aclose()
            await drivers.backend.aclose()
            if drivers.outbox is not None:
                await drivers.outbox.aclose()

    def close_with_loop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have :meth:`aclose` in the running loop await ``closer()`` (an extension's connection)."""
        self._closers.setdefault(asyncio.get_running_loop(), []).append(closer)

    async def __aenter__(self) -> App:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sending -----------------------------------------------------------------------------

    def outgoing(self, message: Message) -> OutgoingMessage:
        """Encode a message for the broker.

        Raises:
            SerializationError: an argument cannot be encoded; the error names the task and it.
            MessageTooLargeError: the message is over ``message_max_bytes``.
        """
        return _send_path.outgoing(self, message)

    def send_message(
        self, message: Message, *, task_name: str | None = None, connection: Any = None
    ) -> Coroutine[Any, Any, AsyncResult[Any]]:
        """Publish a built message; awaited, the handle on its result.

        With ``connection`` (a database connection, see :meth:`send_many`) the message is
        written in that connection's transaction.
        """
        # The send path's coroutine itself, not one awaiting it: every enqueue comes here.
        return _send_path.send_message(self, message, task_name=task_name, connection=connection)

    async def send_many(
        self, messages: Sequence[Message], *, connection: Any = None
    ) -> list[AsyncResult[Any]]:
        """Publish many messages in as few broker round trips as the driver allows.

        With ``connection``, an open connection to the broker's own database (an asyncpg
        connection for postgresql://), the messages are written in that connection's current
        transaction: they run only if it commits. Other brokers raise ConfigurationError.
        """
        return await _send_path.send_many(self, messages, connection=connection)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncResult[Any]:
        """Send a task by name, without its code (Celery's ``send_task``); options as apply_async.

        Like ``apply_async``: ``await app.send_task(...)`` in async code, a blocking handle
        from sync code (docs/sync.md). ``protocol="celery"`` sends a Celery protocol message to
        a Celery worker instead: awaiting it gives a :class:`~asyncq.celery.producer.CeleryResult`.
        """
        protocol = options.pop("protocol", "asyncq")
        if protocol == "celery":
            from asyncq.celery.producer import send_celery_task

            return cast("SyncResult[Any]", send_celery_task(self, name, args, kwargs, **options))
        if protocol != "asyncq":
            raise ConfigurationError(f"unknown protocol {protocol!r}: use 'asyncq' or 'celery'")
        task = self.tasks.get(name) or self.stand_in_task(name)
        return task.apply_async(args, kwargs, **options)

    def stand_in_task(self, name: str) -> Task[Any, Any]:
        """A task object for a name not registered here (its code lives elsewhere), to build messages.

        It has the default options; calling it raises ``NotRegistered``.
        """
        return SyncTask(self, _remote_stub, TaskOptions(name=name))

    def apply_eagerly(self, handle: AsyncResult[Any], sig: Signature[Any]) -> SyncResult[Any]:
        """Run a frozen signature inline (``task_always_eager``, ``task.apply``); ``handle`` is its id.

        Tasks and signatures reach eager mode through their app, so they need not import it.
        """
        return apply_eagerly(self, handle, sig)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's spelling
        """A handle on the result of the task with this id."""
        return AsyncResult(task_id, self)

    async def purge(self, queue: str | None = None) -> int:
        """Drop every waiting message of ``queue`` (default: the default queue)."""
        await self.connect()
        return await self.broker.purge(queue or self.conf.task_default_queue)

    # -- workers -----------------------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        """A worker for this app; ``async with app.worker(...)`` runs it in the current loop.

        Options: see :class:`~asyncq.worker.worker.Worker`.
        """
        from asyncq.runner import refuse_in_spawned_child
        from asyncq.worker.worker import Worker

        refuse_in_spawned_child()
        return Worker(self, **options)


def _remote_stub(*args: Any, **kwargs: Any) -> Any:
    raise NotRegistered("this task is not defined in this process; it runs only on workers")
