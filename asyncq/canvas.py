"""Canvas: signatures and the workflows built from them (chain, group, chord, chunks, map).

A :class:`Signature` is a task call not sent yet: the task's name, args, kwargs and send
options. Signatures nest into :class:`Chain` (steps in order, each given the previous
result), :class:`Group` (members in parallel) and :class:`Chord` (a group, then a callback
given the list of its results). Awaiting any of them enqueues it and returns its final value;
``enqueue()`` returns a handle instead.

Workflows travel inside task messages as plain dicts (the formats are in docs/canvas.md): a
chain's remaining steps ride in ``message.chain``, callbacks in ``message.callbacks`` /
``message.errbacks``, and a chord header task carries ``message.chord``. Whichever worker
finishes a task calls :func:`on_task_finished`, which sends what comes next, so nothing
depends on the producer staying alive. Every task id of a workflow is assigned before the
first message leaves (``freeze``), so the producer holds the handle of the last step at once.

A chord joins through the result backend's atomic counter: each header task increments it
when it finishes, and the one that brings it to the header's size checks every header record
is final, claims the join with a second counter, and sends the callback. No task polls.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

from asyncq._utils import new_id, to_seconds
from asyncq.exceptions import AsyncqError, ChordError, ConfigurationError, NotRegistered
from asyncq.message import Message
from asyncq.result import AsyncResult, GroupResult, ResultRecord, decode_record, encode_record
from asyncq.serializers import json_dumps, json_loads
from asyncq.states import State
from asyncq.sync import SyncGroupResult, SyncResult, ensure_no_running_loop, send_group
from asyncq.sync import send as send_or_defer
from asyncq.task import BUILTIN_TASKS, AsyncTask, SyncTask, Task, TaskOptions

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "Signature",
    "chain",
    "chord",
    "chunks_group",
    "group",
    "map_signature",
    "on_task_finished",
    "register_builtins",
    "signature",
    "signature_dicts",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Messages per ``publish_many`` when a workflow fans out (a group, a chord header).
PUBLISH_BATCH: Final = 500
#: Record ids per ``get_many`` when a chord joins.
FETCH_BATCH: Final = 1000
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
        if isinstance(task, Task):
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
        steps = Chain(self, other)
        return steps.tasks[0] if len(steps.tasks) == 1 else steps

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
            from asyncq.eager import apply_eagerly  # eager builds on canvas

            return apply_eagerly(app, result, copy)
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


class Chain(Signature[Any]):
    """Steps run one after another, each given the previous result: ``chain(a.s(), b.s())``.

    Also written ``a.s() | b.s()``. Nested chains are flattened, a group followed by a step
    becomes a chord, and steps after a chord become part of its callback, so the chain always
    ends in its only group or chord. The result is the last step's.
    """

    subtask_type = "chain"

    def __init__(self, *tasks: Signature[Any] | Mapping[str, Any] | Iterable[Signature[Any]]) -> None:
        super().__init__("asyncq.chain")
        self.tasks: list[Signature[Any]] = _normalize_chain(_members(tasks))

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks) if self.tasks else "chain()"

    def set(self, **options: Any) -> Self:
        """Set options on every task of the chain."""
        _check_container_options(self, options)
        for step in self.tasks:
            step.set(**options)
        return self

    def link(self, callback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` after the last step succeeds."""
        if not self.tasks:
            raise ValueError("an empty chain has no step to link to")
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` if a step fails (it is added to every step, and runs once)."""
        errback = signature(errback, app=self.app)
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def __call__(self, *args: Any, **kwargs: Any) -> SyncResult[Any]:
        """Send it, as ``apply_async`` (Celery's ``chain(...)()``)."""
        return self.apply_async(args, kwargs)

    def to_dict(self) -> dict[str, Any]:
        return _container_dict("asyncq.chain", "chain", {"tasks": [s.to_dict() for s in self.tasks]}, {})

    def _find_app(self) -> App | None:
        return _first_app(self.tasks)

    def _freeze(self, app: App, parent: AsyncResult[Any] | None) -> AsyncResult[Any]:
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        result = parent
        for step in self.tasks:
            result = step._freeze(app, result)
        assert result is not None
        return result

    def _entries(self) -> Iterator[Signature[Any]]:
        if self.tasks:
            yield from self.tasks[0]._entries()

    def _leaves(self) -> Iterator[Signature[Any]]:
        for step in self.tasks:
            yield from step._leaves()

    def _completion(self) -> Signature[Any]:
        return self.tasks[-1]._completion()

    async def _build(self, app: App, context: _Context, rest: Sequence[Signature[Any]] = ()) -> list[Message]:
        steps = [*self.tasks, *rest]
        if not steps:
            raise ValueError("an empty chain has nothing to run")
        # Normalized: every step but the last is a plain task, so the rest rides in its message.
        return await steps[0]._build(app, context, steps[1:])


class Group(Signature[list[Any]]):
    """Members run in parallel: ``group(add.s(i, i) for i in range(10))``.

    The result is a :class:`~asyncq.result.GroupResult` whose value is the list of the
    members' results, in order. Members are published in batches of ``PUBLISH_BATCH``.
    """

    subtask_type = "group"

    def __init__(
        self,
        *tasks: Signature[Any] | Mapping[str, Any] | Iterable[Signature[Any]],
        group_id: str | None = None,
    ) -> None:
        super().__init__("asyncq.group")
        self.tasks: list[Signature[Any]] = _members(tasks)
        self.group_id = group_id

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(member) for member in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def set(self, **options: Any) -> Self:
        """Set options on every member; ``group_id`` names the group itself."""
        group_id = options.pop("group_id", None)
        if group_id is not None:
            self.group_id = str(group_id)
        _check_container_options(self, options)
        for member in self.tasks:
            member.set(**options)
        return self

    def link(self, callback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` after each member succeeds (for one callback after all: ``chord``)."""
        callback = signature(callback, app=self.app)
        for member in self.tasks:
            member.link(callback)
        return callback

    def link_error(self, errback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` for each member that fails."""
        errback = signature(errback, app=self.app)
        for member in self.tasks:
            member.link_error(errback)
        return errback

    def freeze(self, app: App | None = None) -> GroupResult:
        """Assign the group id and every missing task id in place; return the GroupResult."""
        return self._freeze(self._bound_app(app), None)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App | None = None,
        **options: Any,
    ) -> SyncGroupResult:
        """Send every member (in batches); return the group's handle.

        ``await group(...).apply_async()`` gives the GroupResult; with no event loop running in
        the thread it sends at once and returns a blocking SyncGroupResult (docs/sync.md).
        """
        app, copy, result, sender = self._prepare(args, kwargs, app, options)
        assert isinstance(result, GroupResult)
        if app.conf.task_always_eager:
            from asyncq.eager import apply_eagerly  # eager builds on canvas

            handle = apply_eagerly(app, result, copy)
            assert isinstance(handle, SyncGroupResult)
            return handle
        return send_group(app, result, sender)

    def delay(self, *args: Any, **kwargs: Any) -> SyncGroupResult:
        """Send every member from sync code; return a blocking handle: ``group(...).delay().get()``."""
        ensure_no_running_loop("group.delay()", "`await group(...).enqueue()`")
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> SyncGroupResult:
        """Send it, as ``apply_async`` (Celery's ``group(...)()``)."""
        return self.apply_async(args, kwargs)

    async def enqueue(self, *args: Any, **kwargs: Any) -> GroupResult:
        """Send every member with these extra arguments prepended; return the GroupResult."""
        return await self.apply_async(args, kwargs)

    def to_dict(self) -> dict[str, Any]:
        options = {"group_id": self.group_id} if self.group_id else {}
        return _container_dict("asyncq.group", "group", {"tasks": [m.to_dict() for m in self.tasks]}, options)

    def _find_app(self) -> App | None:
        return _first_app(self.tasks)

    def _freeze(self, app: App, parent: AsyncResult[Any] | None) -> GroupResult:
        if self.group_id is None:
            self.group_id = new_id()
        results = []
        for member in self.tasks:
            if member.subtask_type is None:
                member.options.setdefault("group_id", self.group_id)
            results.append(member._freeze(app, parent))
        return GroupResult(self.group_id, results, app, parent=parent)

    def _entries(self) -> Iterator[Signature[Any]]:
        for member in self.tasks:
            yield from member._entries()

    def _leaves(self) -> Iterator[Signature[Any]]:
        for member in self.tasks:
            yield from member._leaves()

    def _completion(self) -> Signature[Any]:
        raise TypeError(
            f"{self!r} ends in a group, which finishes as several tasks; as a chord header member "
            "it needs a single last task: wrap it in a chord of its own"
        )

    async def _build(self, app: App, context: _Context, rest: Sequence[Signature[Any]] = ()) -> list[Message]:
        assert not rest, "a normalized chain never continues after a group"
        messages: list[Message] = []
        for member in self.tasks:
            messages += await member._build(app, context)
        return messages


class Chord(Signature[Any]):
    """A group (the header), then a callback given the list of its results, in order.

    ``await chord((add.s(i, i) for i in range(100)), tsum.s())``. The header's tasks count
    themselves through the result backend's atomic counter as they finish; the last one
    sends the callback. If a header task failed, the callback is marked FAILURE with a
    :class:`~asyncq.exceptions.ChordError` naming it, and the callback's ``link_error`` runs.
    An empty header sends the callback at once with ``[]``.
    """

    subtask_type = "chord"

    def __init__(
        self,
        header: Group | Iterable[Signature[Any] | Mapping[str, Any]],
        body: Signature[Any] | Mapping[str, Any],
    ) -> None:
        super().__init__("asyncq.chord")
        group_id = header.group_id if isinstance(header, Group) else None
        members = header.tasks if isinstance(header, Group) else _members((header,))
        # A group nested in the header contributes its members: each reports to the join itself.
        self.header = Group(_flatten_groups(members), group_id=group_id)
        self.body: Signature[Any] = signature(body)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def set(self, **options: Any) -> Self:
        """Set options on every task of the header and the callback."""
        _check_container_options(self, options)
        self.header.set(**options)
        self.body.set(**options)
        return self

    def link(self, callback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` after the chord's callback succeeds."""
        return self.body.link(callback)

    def link_error(self, errback: Signature[Any] | Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` if the chord's callback fails or cannot run (a header task failed)."""
        return self.body.link_error(errback)

    def __call__(self, *args: Any, **kwargs: Any) -> SyncResult[Any]:
        """Send it, as ``apply_async`` (Celery's ``chord(...)()``)."""
        return self.apply_async(args, kwargs)

    def to_dict(self) -> dict[str, Any]:
        kwargs = {"header": self.header.to_dict(), "body": self.body.to_dict()}
        return _container_dict("asyncq.chord", "chord", kwargs, {})

    def _find_app(self) -> App | None:
        return self.header._find_app() or self.body._find_app()

    def _freeze(self, app: App, parent: AsyncResult[Any] | None) -> AsyncResult[Any]:
        header = self.header._freeze(app, parent)
        return self.body._freeze(app, header)

    def _entries(self) -> Iterator[Signature[Any]]:
        return self.header._entries()

    def _leaves(self) -> Iterator[Signature[Any]]:
        yield from self.header._leaves()
        yield from self.body._leaves()

    def _completion(self) -> Signature[Any]:
        return self.body._completion()

    async def _build(self, app: App, context: _Context, rest: Sequence[Signature[Any]] = ()) -> list[Message]:
        assert not rest, "a normalized chain puts the steps after a chord into its callback"
        members = self.header.tasks
        if not members:
            self.body._prepend(([],), {})
            return await self.body._build(app, context)
        if self.header.group_id is None:
            self.header.group_id = new_id()
        group_id = self.header.group_id
        completions = [member._completion() for member in members]
        join = {"group_id": group_id, "size": len(members)}
        for task in completions:
            task.options["chord"] = join
            task.options["ignore_result"] = False  # the join reads every header result
        # The callback and the ids to collect are stored once, not in each of the N header
        # messages (which would make a chord's messages grow with N squared).
        description = {
            "callback": self.body.to_dict(),
            "results": [task.options["task_id"] for task in completions],
        }
        await app.connect()
        if not app.backend.capabilities.counters:
            scheme = app.backend_url.partition(":")[0]
            raise ConfigurationError(
                f"chords join through the result backend's counters, which {scheme}:// does not "
                "have; use a backend that stores results (redis, sqlite)"
            )
        await app.backend.set(
            _description_key(group_id), json_dumps(description), final=True, ttl=app.conf.result_expires
        )
        messages: list[Message] = []
        for member in members:
            messages += await member._build(app, context)
        return messages


#: Celery's spellings: the constructs are used like functions.
chain = Chain
group = Group
chord = Chord


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
    if kind == "chain":
        return Chain(*[_from_dict(step, app) for step in kwargs.get("tasks", ())])
    if kind == "group":
        return Group(*[_from_dict(m, app) for m in kwargs.get("tasks", ())], group_id=options.get("group_id"))
    if kind == "chord":
        header = _from_dict(kwargs["header"], app)
        assert isinstance(header, Group), "a chord's header is a group"
        return Chord(header, _from_dict(kwargs["body"], app))
    raise ValueError(f"unknown subtask_type {kind!r}; known: chain, group, chord")


def signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    """Serialize ``link`` / ``link_error`` values: a signature, a dict, or a list of them."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [item.to_dict() if isinstance(item, Signature) else dict(item) for item in items] or None


def _members(tasks: tuple[Any, ...]) -> list[Signature[Any]]:
    """Accept ``f(a, b)``, ``f([a, b])`` and ``f(generator)``."""
    if len(tasks) == 1 and not isinstance(tasks[0], Signature | Mapping):
        tasks = tuple(tasks[0])
    return [signature(task) for task in tasks]


def _flatten_groups(members: Iterable[Signature[Any]]) -> list[Signature[Any]]:
    flat: list[Signature[Any]] = []
    for member in members:
        flat.extend(_flatten_groups(member.tasks) if isinstance(member, Group) else [member])
    return flat


def _normalize_chain(steps: Iterable[Signature[Any]]) -> list[Signature[Any]]:
    """Flatten chains, make ``group, step`` a chord, fold steps after a chord into its callback."""
    normalized: list[Signature[Any]] = []
    for step in steps:
        if isinstance(step, Chain):
            for inner in step.tasks:
                _append_step(normalized, inner)
        else:
            _append_step(normalized, step)
    return normalized


def _append_step(steps: list[Signature[Any]], step: Signature[Any]) -> None:
    last = steps[-1] if steps else None
    if isinstance(last, Group):
        steps[-1] = Chord(last, step)
    elif isinstance(last, Chord):
        steps[-1] = Chord(last.header, Chain(last.body, step))
    else:
        steps.append(step)


def _first_app(members: Iterable[Signature[Any]]) -> App | None:
    for member in members:
        found = member._find_app()
        if found is not None:
            return found
    return None


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


def _description_key(group_id: str) -> str:
    return f"chord:{group_id}:description"


# -- map / starmap / chunks ----------------------------------------------------------------------


def map_signature(task: Task[Any, Any], it: Iterable[Any], *, star: bool) -> Signature[list[Any]]:
    """One message that runs ``task`` over every item of ``it`` on one worker (Celery's map)."""
    items = [list(item) for item in it] if star else list(it)
    return Signature(
        "asyncq.starmap" if star else "asyncq.map",
        kwargs={"task": task.name, "it": items},
        options={"queue": task.app.route(task.name, task.options.queue)},
        app=task.app,
    )


def chunks_group(task: Task[Any, Any], it: Iterable[Any], n: int) -> Group:
    """A group of starmaps over ``n``-item slices of ``it`` (Celery's chunks)."""
    if n < 1:
        raise ValueError(f"chunk size must be at least 1, not {n}")
    items = [list(item) for item in it]
    return Group(map_signature(task, items[i : i + n], star=True) for i in range(0, len(items), n))


def register_builtins(app: App) -> None:
    """Register the tasks ``map``, ``starmap`` and ``chunks`` send, so any worker runs them."""
    for name, fn in zip(sorted(BUILTIN_TASKS), (_map, _starmap), strict=True):
        if name not in app.tasks:
            app.tasks[name] = AsyncTask(app, fn, TaskOptions(name=name, bind=True))


async def _map(self: Task[Any, Any], task: str, it: list[Any]) -> list[Any]:
    return await _call_each(self.app.get_task(task), [(item,) for item in it])


async def _starmap(self: Task[Any, Any], task: str, it: list[list[Any]]) -> list[Any]:
    return await _call_each(self.app.get_task(task), [tuple(item) for item in it])


async def _call_each(target: Task[Any, Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    if target.is_async:
        return [await target._invoke(args, {}) for args in calls]
    # A sync task must not block the loop: the whole batch runs in one thread.
    return await asyncio.to_thread(lambda: [target._invoke(args, {}) for args in calls])


# -- the worker side: what happens when a task finishes --------------------------------------------


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
                task = self.stand_ins[name] = SyncTask(app, _not_here, TaskOptions(name=name))
        return task


def _not_here(*args: Any, **kwargs: Any) -> Any:
    raise NotRegistered("this task is not defined in this process; it runs only on workers")


async def _publish(app: App, messages: Sequence[Message]) -> None:
    for start in range(0, len(messages), PUBLISH_BATCH):
        await app.send_many(messages[start : start + PUBLISH_BATCH])


async def on_task_finished(
    app: App, message: Message, state: State, result: Any, exc: BaseException | None
) -> None:
    """Start what the finished task's canvas slots ask for; called by the worker.

    On SUCCESS: send each callback (``link``) with the result prepended, and the chain's next
    step with the rest of the chain. Otherwise: run the errbacks (``link_error``) with
    ``(task_id, error)``, and mark every remaining step of the chain FAILURE with the same
    error, so whoever awaits the chain's result gets it instead of waiting forever. Either
    way, a chord header task then counts itself toward its chord's join.
    """
    context = _Context(root_id=message.root_id or message.id, parent_id=message.id)
    if state == State.SUCCESS:
        follow: list[Signature[Any]] = [signature(d, app=app) for d in message.callbacks or ()]
        if message.chain:
            follow.append(Chain(*[signature(d, app=app) for d in message.chain]))
        messages: list[Message] = []
        for sig in follow:
            sig._freeze(app, None)  # ids come frozen from asyncq producers; others may omit them
            sig._prepend((result,), {})
            messages += await sig._build(app, context)
        await _publish(app, messages)
    else:
        error = exc if exc is not None else AsyncqError(f"task {message.task}[{message.id}] ended {state}")
        pending = Chain(*[signature(d, app=app) for d in message.chain]) if message.chain else None
        await _fail(app, context, message.id, error, message.errbacks or [], pending)
    if message.chord:
        await _chord_join(app, message.chord, context)


async def _fail(
    app: App,
    context: _Context,
    failed_id: str,
    exc: BaseException,
    errbacks: list[dict[str, Any]],
    pending: Signature[Any] | None,
) -> None:
    """Fail what can no longer run (``pending``), then run errbacks once each and chord joins.

    Every task of ``pending`` gets a FAILURE record with ``exc`` (its meta names the task
    that failed first), its errbacks join the failed task's own, and an identical errback
    attached to several steps runs once. Tasks of ``pending`` that report to an enclosing
    chord count themselves toward it, so that chord fails too instead of never joining.
    """
    errbacks = list(errbacks)
    joins: list[dict[str, Any]] = []
    if pending is not None:
        pending._freeze(app, None)
        leaves = list(pending._leaves())
        for start in range(0, len(leaves), PUBLISH_BATCH):
            batch = leaves[start : start + PUBLISH_BATCH]
            await asyncio.gather(*(_store_failure(app, leaf, exc, failed_id) for leaf in batch))
        for leaf in leaves:
            errbacks += leaf.options.get("link_error") or ()
            if leaf.options.get("chord"):
                joins.append(leaf.options["chord"])
    error = {"type": _qualified_name(exc), "message": str(exc)}
    seen: set[str] = set()
    messages: list[Message] = []
    for data in errbacks:
        key = json.dumps(data, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        errback = signature(data, app=app)
        errback._freeze(app, None)
        errback._prepend((failed_id, error), {})
        messages += await errback._build(app, context)
    await _publish(app, messages)
    for join in joins:
        await _chord_join(app, join, context)


async def _store_failure(app: App, task: Signature[Any], exc: BaseException, failed_id: str) -> None:
    task_id = task.options["task_id"]
    record = encode_record(
        app.serializers,
        task_id=task_id,
        status=State.FAILURE,
        exc=exc,
        meta={"failed_task_id": failed_id} if failed_id != task_id else None,
        task=task.task,
        serializer=app.conf.result_serializer,
    )
    await app.backend.set(task_id, record, final=True, ttl=app.conf.result_expires)


async def _chord_join(app: App, join: Mapping[str, Any], context: _Context) -> None:
    """Count one finished header task; the one completing the count sends the callback.

    Every finish counts, a redelivered duplicate too, so the count can reach the size while
    a header task is still running. That is why the counter only says when to look: the
    callback goes out once every header record is final, and ``chord:<id>:joined`` (a second
    counter) lets exactly one worker send it. A duplicate counted early means the real last
    task sees a count above the size and looks again. See docs/canvas.md for the guarantees.
    """
    group_id, size = str(join["group_id"]), int(join["size"])
    backend, ttl = app.backend, app.conf.result_expires
    count = await backend.incr(f"chord:{group_id}", ttl=ttl)
    if count < size:
        return
    raw = await backend.get(_description_key(group_id))
    if raw is None:
        logger.error("chord %s: its description expired or was deleted; its callback cannot run", group_id)
        return
    description = json_loads(raw)
    ids: list[str] = description["results"]
    records: list[ResultRecord | None] = []
    for start in range(0, len(ids), FETCH_BATCH):
        for data in await backend.get_many(ids[start : start + FETCH_BATCH]):
            records.append(None if data is None else decode_record(data, app.serializers))
    if not all(record is not None and record.is_ready for record in records):
        return  # counted early by a duplicate: the header task still running will join
    if await backend.incr(f"chord:{group_id}:joined", ttl=ttl) != 1:
        return  # another worker joined it
    callback = signature(description["callback"], app=app)
    callback._freeze(app, None)
    failed = next(
        ((task_id, r) for task_id, r in zip(ids, records, strict=True) if r and r.status != State.SUCCESS),
        None,
    )
    if failed is None:
        callback._prepend(([r.result for r in records if r is not None],), {})
        await _publish(app, await callback._build(app, context))
        return
    task_id, record = failed
    culprit = str(record.meta.get("failed_task_id") or task_id)
    error = ChordError(
        f"chord {group_id}: header task {culprit} failed: {record.exc_type}: {record.exc_message}", culprit
    )
    first = next(callback._leaves())
    await _fail(app, context, first.options["task_id"], error, [], callback)


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"
