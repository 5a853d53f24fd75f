"""The canvas constructs: chain, group and chord, and the map / starmap / chunks shapes.

Each construct is a :class:`~asyncq.signature.Signature` with one method per engine step
(freeze ids, prepend a parent's result, build the starting messages). The formats they travel
in are in docs/canvas.md; the worker-side steps that follow a finished task are in
:mod:`asyncq.workflow`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from asyncq._utils import new_id
from asyncq.exceptions import ConfigurationError
from asyncq.message import Message
from asyncq.result import AsyncResult, GroupResult
from asyncq.serializers import json_dumps
from asyncq.signature import (
    Signature,
    _check_container_options,
    _container_dict,
    _Context,
    signature,
)
from asyncq.sync import SyncGroupResult, SyncResult, ensure_no_running_loop, send_group

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.task import Task

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "chain",
    "chord",
    "chunks_group",
    "description_key",
    "group",
    "map_signature",
]


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

    @classmethod
    def _from_wire(
        cls, kwargs: Mapping[str, Any], options: Mapping[str, Any], app: App | None
    ) -> Signature[Any]:
        return cls(*[signature(step, app=app) for step in kwargs.get("tasks", ())])

    def _sole(self) -> Signature[Any]:
        return self.tasks[0] if len(self.tasks) == 1 else self

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

    @classmethod
    def _from_wire(
        cls, kwargs: Mapping[str, Any], options: Mapping[str, Any], app: App | None
    ) -> Signature[Any]:
        members = [signature(member, app=app) for member in kwargs.get("tasks", ())]
        return cls(*members, group_id=options.get("group_id"))

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
            handle = app.apply_eagerly(result, copy)
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

    @classmethod
    def _from_wire(
        cls, kwargs: Mapping[str, Any], options: Mapping[str, Any], app: App | None
    ) -> Signature[Any]:
        header = signature(kwargs["header"], app=app)
        assert isinstance(header, Group), "a chord's header is a group"
        return cls(header, signature(kwargs["body"], app=app))

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
            description_key(group_id), json_dumps(description), final=True, ttl=app.conf.result_expires
        )
        messages: list[Message] = []
        for member in members:
            messages += await member._build(app, context)
        return messages


#: Celery's spellings: the constructs are used like functions.
chain = Chain
group = Group
chord = Chord


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


def description_key(group_id: str) -> str:
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
