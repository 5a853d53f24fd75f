"""The worker side of canvas: what happens when a task of a workflow finishes.

Whichever worker finishes a task calls :func:`on_task_finished`, which sends what the
message's canvas slots ask for next (callbacks, the chain's next step, errbacks), so nothing
depends on the producer staying alive. A chord joins through the result backend's atomic
counter: each header task increments it when it finishes, and the one that brings it to the
header's size checks every header record is final, claims the join with a second counter,
and sends the callback. No task polls. The builtin ``map`` / ``starmap`` tasks live here too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from asyncq.constructs import Chain, description_key
from asyncq.exceptions import AsyncqError, ChordError
from asyncq.message import Message
from asyncq.result import ResultRecord, decode_record, encode_record
from asyncq.serializers import json_loads
from asyncq.signature import PUBLISH_BATCH, Signature, _Context, _publish, signature
from asyncq.states import State
from asyncq.task import BUILTIN_TASKS, AsyncTask, Task, TaskOptions

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["on_task_finished", "register_builtins"]

logger = logging.getLogger(__name__)

#: Record ids per ``get_many`` when a chord joins.
FETCH_BATCH: Final = 1000


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
    raw = await backend.get(description_key(group_id))
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
