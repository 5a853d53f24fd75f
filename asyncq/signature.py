"""Signatures: one task call not sent yet, its wire form, and how it becomes a message.

A :class:`Signature` is a task's name, args, kwargs and send options. The constructs built
from signatures (chain, group, chord) live in :mod:`asyncq.constructs`; they register
themselves here by ``subtask_type`` so a serialized workflow is rebuilt as the right
construct (``signature(dict)``). The public names are re-exported by :mod:`asyncq.canvas`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

from asyncq._utils import new_id, to_seconds
from asyncq.exceptions import ConfigurationError
from asyncq.message import Message
from asyncq.result import AsyncResult
from asyncq.sync import SyncResult, ensure_no_running_loop
from asyncq.sync import send as send_or_defer

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.task import Task

__all__ = ["ENGINE_OPTIONS", "OPTIONS", "PUBLISH_BATCH", "Signature", "signature", "signature_dicts"]

R = TypeVar("R")

#: Messages per ``publish_many`` when a workflow fans out (a group, a chord header).
PUBLISH_BATCH: Final = 500
#: Options a signature accepts, with Celery's names and meaning (see ``Task.apply_async``).
OPTIONS: Final = (
    "countdown",
    "eta",
    "expires",
    "headers",
    "ignore_result",
    "link",
    "link_error",
    "priority",
    "queue",
    "serializer",
    "task_id",
)
#: What a sent workflow's handle has and an unsent one lacks: named in the error that says so.
_RESULT_NAMES: Final = frozenset(
    {"get", "wait", "ready", "successful", "failed", "state", "status", "result", "info", "forget", "id"}
)
#: Options the engine sets itself: the group a task belongs to, the chord it reports to.
ENGINE_OPTIONS: Final = ("group_id", "chord")


# -- signatures ----------------------------------------------------------------------------------


#: The constructs by ``subtask_type`` ("chain", "group", "chord"), filled in as they are defined.
_CONSTRUCTS: dict[str, type[Signature[Any]]] = {}


class Signature(Generic[R]):
    """One task call, not sent yet: ``add.s(2, 2)``, ``add.si(2, 2)``, ``signature("name", ...)``.

    A partial signature (``add.s(2)``) gets the previous step's result prepended to its
    args when it runs in a chain or as a callback; an immutable one (``si``) ignores it.
    ``set(...)`` takes ``apply_async``'s options (``queue``, ``countdown``, ``priority``, ...).

    Attributes:
        task: the task's registered name.
        args / kwargs: the arguments known so far.
        options: send options (JSON-ready: durations in seconds, times as ISO 8601 strings).
        immutable: True if results of parents are not prepended.
        app: the app it is sent through (not serialized).
    """

    subtask_type: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.subtask_type is not None:
            _CONSTRUCTS[cls.subtask_type] = cls

    @classmethod
    def _from_wire(
        cls, kwargs: Mapping[str, Any], options: Mapping[str, Any], app: App | None
    ) -> Signature[Any]:
        """Rebuild a construct from its serialized ``kwargs`` and ``options`` (each construct has one)."""
        raise NotImplementedError(f"{cls.__name__} is not a construct")

    def _sole(self) -> Signature[Any]:
        """The simplest equal form: a one-step chain is its step."""
        return self

    def __init__(
        self,
        task: str | Task[Any, Any],
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        app: App | None = None,
    ) -> None:
        if not isinstance(task, str):
            app = app or task.app
            task = task.name
        self.task = task
        self.args: tuple[Any, ...] = tuple(args or ())
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.options: dict[str, Any] = {}
        self.immutable = immutable
        self.app = app
        if options:
            self.set(**options)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}{'!' if self.immutable else ''}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    # -- building ------------------------------------------------------------------------------

    def set(self, **options: Any) -> Self:
        """Set send options in place (Celery's names); returns the signature for chaining."""
        for name, value in options.items():
            if name not in OPTIONS and name not in ENGINE_OPTIONS:
                raise TypeError(f"unknown signature option {name!r}; known: {', '.join(OPTIONS)}")
            if value is None:
                self.options.pop(name, None)
            else:
                self.options[name] = _option_value(name, value)
        return self

    def clone(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``args`` prepended and ``kwargs`` merged in (unless immutable)."""
        copy = self._copy()
        copy._prepend(tuple(args or ()), dict(kwargs or {}))
        return copy

    def link(self, callback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` with this task's result after it succeeds; returns ``callback``."""
        callback = signature(callback, app=self.app)
        self.options["link"] = [*self.options.get("link", ()), callback.to_dict()]
        return callback

    def link_error(self, errback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback(task_id, error, ...)`` if this task fails; returns ``errback``.

        ``error`` is ``{"type": "module.ExcType", "message": str(exc)}``; the full exception
        and traceback are in the failed task's record (``app.AsyncResult(task_id)``).
        """
        errback = signature(errback, app=self.app)
        self.options["link_error"] = [*self.options.get("link_error", ()), errback.to_dict()]
        return errback

    def __or__(self, other: Signature[Any]) -> Signature[Any]:
        if not isinstance(other, Signature):
            return NotImplemented
        # Chain is defined on top of Signature (asyncq.constructs) and registers itself.
        return _CONSTRUCTS["chain"]._from_wire({"tasks": [self, other]}, {}, self.app)._sole()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that travels in messages (docs/canvas.md)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "immutable": self.immutable,
            "subtask_type": None,
        }

    def _copy(self) -> Self:
        copy: Self = signature(self.to_dict(), app=self._find_app())  # type: ignore[assignment]
        return copy

    def _bound_app(self, app: App | None) -> App:
        found = app or self._find_app()
        if found is None:
            raise ConfigurationError(
                f"{self!r} is not bound to an app: build it from a task (task.s()) or pass app="
            )
        return found

    def _find_app(self) -> App | None:
        return self.app

    # -- sending -------------------------------------------------------------------------------

    def freeze(self, app: App | None = None) -> AsyncResult[R]:
        """Assign every missing task and group id in place; return the handle of the result."""
        result: AsyncResult[R] = self._freeze(self._bound_app(app), None)
        return result

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Any,
    ) -> SyncResult[R]:
        """Send it (a private copy: the signature can be sent again); return the result handle.

        ``args`` are prepended and ``kwargs`` merged, as for a partial; ``options`` as ``set``.
        In async code ``await sig.apply_async()`` gives the AsyncResult; with no event loop
        running in the thread it sends at once and returns a blocking SyncResult (docs/sync.md).
        """
        app, copy, result, sender = self._prepare(args, kwargs, app, options)
        if app.conf.task_always_eager:
            return app.apply_eagerly(result, copy)
        return send_or_defer(app, result, sender)

    def _prepare(
        self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, app: App | None, options: Any
    ) -> tuple[App, Signature[Any], AsyncResult[Any], Callable[[], Awaitable[None]]]:
        """Copy and freeze it now (so ids are known); return the copy and what publishes it."""
        app = self._bound_app(app)
        copy = self.clone(args, kwargs)
        if options:
            copy.set(**options)
        result = copy._freeze(app, None)

        async def publish() -> None:
            await _publish(app, await copy._build(app, _Context()))

        return app, copy, result, publish

    async def enqueue(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Send it with these extra arguments (prepended, as for a partial); return the handle."""
        return await self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> SyncResult[R]:
        """Send it from sync code and return a blocking handle: ``chain(...).delay().get()``.

        For code with no running event loop (docs/sync.md); in async code, ``await sig.enqueue()``.

        Raises:
            asyncq.exceptions.BlockingCallError: this thread runs an event loop.
        """
        ensure_no_running_loop(f"{self._kind()}.delay()", f"`await {self._kind()}.enqueue()`")
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, in this process, as Celery's ``sig()`` does; workflows are sent."""
        app = self._bound_app(None)
        copy = self.clone(args, kwargs)
        return app.get_task(self.task)._invoke(copy.args, copy.kwargs)

    def _kind(self) -> str:
        return self.subtask_type or "signature"

    if not TYPE_CHECKING:  # at run time only: the type checker still reports unknown names

        def __getattr__(self, name: str) -> Any:
            if name in _RESULT_NAMES:
                raise AttributeError(
                    f"{type(self).__name__!r} object has no attribute {name!r}: a {self._kind()} is "
                    f"not sent yet; send it, then wait: `{self._kind()}(...).delay().{name}`, or "
                    f"`await {self._kind()}(...)` in async code"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __await__(self) -> Generator[Any, None, R]:
        return self._run().__await__()

    async def _run(self) -> R:
        result = await self.enqueue()
        return await result.get()

    # -- the engine: one method per construct --------------------------------------------------

    def _freeze(self, app: App, parent: AsyncResult[Any] | None) -> AsyncResult[Any]:
        task_id = self.options.setdefault("task_id", new_id())
        return AsyncResult(task_id, app, task_name=self.task, parent=parent)

    def _prepend(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for entry in self._entries():
            if not entry.immutable:
                entry.args = (*args, *entry.args)
                entry.kwargs = {**entry.kwargs, **kwargs}

    def _entries(self) -> Iterator[Signature[Any]]:
        """The tasks that run first (and get a parent's result)."""
        yield self

    def _leaves(self) -> Iterator[Signature[Any]]:
        """Every task of the workflow."""
        yield self

    def _completion(self) -> Signature[Any]:
        """The one task whose end is this signature's end (a chord header member reports from it)."""
        return self

    async def _build(self, app: App, context: _Context, rest: Sequence[Signature[Any]] = ()) -> list[Message]:
        """The messages that start this signature; ``rest`` are chain steps to run after it."""
        options = self.options
        message = context.task(app, self.task).build_message(
            self.args,
            self.kwargs,
            countdown=options.get("countdown"),
            eta=_eta(options.get("eta")),
            expires=_expires(options.get("expires")),
            priority=options.get("priority"),
            queue=options.get("queue"),
            task_id=options.get("task_id"),
            headers=options.get("headers"),
            serializer=options.get("serializer"),
            ignore_result=options.get("ignore_result"),
            link=options.get("link"),
            link_error=options.get("link_error"),
        )
        message.group_id = options.get("group_id")
        message.chord = options.get("chord")
        if rest:
            message.chain = [step.to_dict() for step in rest]
        if context.parent_id is not None:
            message.parent_id = context.parent_id
            message.root_id = context.root_id
        return [message]


def signature(
    varies: str | Signature[Any] | Mapping[str, Any],
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    app: App | None = None,
    immutable: bool = False,
    **options: Any,
) -> Signature[Any]:
    """A signature from a task name, a serialized dict (any construct), or a signature.

    A signature is returned as it is (with ``options`` set on it); a dict is rebuilt as the
    construct its ``subtask_type`` names, bound to ``app``.
    """
    if isinstance(varies, Signature):
        if app is not None and varies.app is None:
            varies.app = app
        return varies.set(**options) if options else varies
    if isinstance(varies, str):
        return Signature(varies, args, kwargs, options, immutable=immutable, app=app)
    if isinstance(varies, Mapping):
        return _from_dict(varies, app)
    raise TypeError(f"cannot make a signature from {type(varies).__name__}")


def _from_dict(data: Mapping[str, Any], app: App | None) -> Signature[Any]:
    kind = data.get("subtask_type")
    kwargs = data.get("kwargs") or {}
    options = data.get("options") or {}
    if kind is None:
        if not isinstance(data.get("task"), str) or not data["task"]:
            raise ValueError(f"a serialized signature needs a task name: {dict(data)!r}")
        immutable = bool(data.get("immutable"))
        sig: Signature[Any] = Signature(data["task"], data.get("args"), kwargs, immutable=immutable)
        sig.options = dict(options)  # already in wire form; engine options included
        sig.app = app
        return sig
    construct = _CONSTRUCTS.get(kind) if isinstance(kind, str) else None
    if construct is None:
        raise ValueError(f"unknown subtask_type {kind!r}; known: {', '.join(sorted(_CONSTRUCTS))}")
    return construct._from_wire(kwargs, options, app)


def signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    """Serialize ``link`` / ``link_error`` values: a signature, a dict, or a list of them."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [item.to_dict() if isinstance(item, Signature) else dict(item) for item in items] or None


def _container_dict(task: str, kind: str, kwargs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": task,
        "args": [],
        "kwargs": kwargs,
        "options": options,
        "immutable": False,
        "subtask_type": kind,
    }


def _check_container_options(sig: Signature[Any], options: Mapping[str, Any]) -> None:
    if "task_id" in options:
        raise TypeError(f"set task_id on the tasks of a {sig.subtask_type}, not on the {sig.subtask_type}")
    if "link" in options or "link_error" in options:
        raise TypeError(f"use {sig.subtask_type}.link() / .link_error(): they say where the callback goes")


def _option_value(name: str, value: Any) -> Any:
    """Put an option in its wire form: JSON-ready, durations in seconds, times in ISO 8601."""
    if name == "countdown":
        return to_seconds(value)
    if name in ("eta", "expires") and isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be an aware datetime (a naive one has no zone): {value!r}")
        return value.isoformat()
    if name == "expires":
        return to_seconds(value) if not isinstance(value, str) else value
    if name in ("link", "link_error"):
        return signature_dicts(value) or []
    if name == "headers":
        return dict(value)
    if name == "priority":
        return int(value)
    return value


def _eta(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value)


def _expires(value: Any) -> float | datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value



@dataclass(slots=True)
class _Context:
    """Where messages built now come from: the finished task (on a worker), or nothing."""

    root_id: str | None = None
    parent_id: str | None = None
    stand_ins: dict[str, Task[Any, Any]] = field(default_factory=dict)

    def task(self, app: App, name: str) -> Task[Any, Any]:
        """The task to build messages with; a stand-in when it is not registered here."""
        task = app.tasks.get(name)
        if task is None:
            task = self.stand_ins.get(name)
            if task is None:
                task = self.stand_ins[name] = app.stand_in_task(name)
        return task


async def _publish(app: App, messages: Sequence[Message]) -> None:
    for start in range(0, len(messages), PUBLISH_BATCH):
        await app.send_many(messages[start : start + PUBLISH_BATCH])
