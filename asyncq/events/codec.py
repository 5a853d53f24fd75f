"""Monitoring events on the wire: a batch is one JSON object per flush (schema: docs/protocol.md).

Emitters record events as cheap tuples on the hot path (``Record``); encoding happens once per
flush, here, with hand-written JSON templates (about a third of the cost of building dicts for
``json.dumps``; times as integer microseconds after the batch's ``t0``, which format several
times faster than floats): the events of a busy worker are the thing that must stay cheap. Decoding
(readers only) uses the json module and gives each event its batch's ``hostname`` and ``pid``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Final

from asyncq.__about__ import __version__
from asyncq.exceptions import SerializationError
from asyncq.serializers import json_dumps

if TYPE_CHECKING:
    from asyncq.message import Message

__all__ = [
    "EVENT_TYPES",
    "EVENTS_VERSION",
    "TASK_EVENT_TYPES",
    "WORKER_EVENT_TYPES",
    "Record",
    "arguments_json",
    "decode_batch",
    "encode_batch",
    "exception_fields",
]

EVENTS_VERSION: Final = 1

# Record codes: the index into TYPES.
SENT, RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REVOKED, REJECTED, DEAD_LETTERED, WAITING = range(10)
ONLINE, HEARTBEAT, OFFLINE = 10, 11, 12
TASK_EVENT_TYPES: Final = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
    "task-dead-lettered",
    "task-waiting",
)
WORKER_EVENT_TYPES: Final = ("worker-online", "worker-heartbeat", "worker-offline")
EVENT_TYPES: Final = TASK_EVENT_TYPES + WORKER_EVENT_TYPES

#: One recorded event, made of atomic values only (str, int, float, None): CPython stops tracking
#: such tuples at its first garbage collection, so a buffer of them costs the collector nothing,
#: where records holding the Message would keep every one alive into the older generations
#: (measured: most of what events cost a busy worker). Task events:
#: ``(code, timestamp, id, retries, name, queue, root_id, parent_id, extra)``; worker events:
#: ``(code, timestamp, "", 0, "", "", None, None, fields)``. ``extra`` by code: SENT, RECEIVED:
#: JSON text, ``,"eta":..,"expires":..,"args":..,"kwargs":..`` (each only when there);
#: SUCCEEDED: the runtime; FAILED: (exception type, message, runtime); RETRIED: (exception type
#: or None, message, retry eta); REVOKED, DEAD_LETTERED: the reason; REJECTED: (reason,
#: requeue); WAITING: (the limit, its key or None, the wait in seconds or None); STARTED: None.
Record = tuple[int, float, str, int, "str | None", str, "str | None", "str | None", Any]

_MESSAGE_LIMIT: Final = 1000  # characters of an exception message or reason kept in an event


def _s(text: str | None) -> str:
    return "null" if text is None else encode_basestring(text)


def exception_fields(exc: BaseException) -> tuple[str, str]:
    """An exception's qualified type name and message (cut to 1,000 characters)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not lose the event
        text = repr(exc)
    return name, text[:_MESSAGE_LIMIT]


def arguments_json(message: Message) -> str:
    """``,"args":...,"kwargs":...`` for an event, or a placeholder when they are not JSON-able."""
    try:
        return f',"args":{json_dumps(message.args).decode()},"kwargs":{json_dumps(message.kwargs).decode()}'
    except SerializationError:  # not JSON-able (a pickle task): say so rather than fail the batch
        return ',"args":"<not JSON>","kwargs":"<not JSON>"'


def _details(code: int, extra: Any) -> str:
    """The fields a (less common) task event adds to its task's, as JSON object text, or ""."""
    if code == FAILED:
        kind, text, runtime = extra
        return f'{{"runtime":{runtime!r},"exception_type":{_s(kind)},"exception_message":{_s(text)}}}'
    if code == RETRIED:
        kind, text, eta = extra
        fields = [] if eta is None else [f'"retry_eta":{eta!r}']
        if kind is not None:
            fields.append(f'"exception_type":{_s(kind)},"exception_message":{_s(text)}')
        return "{" + ",".join(fields) + "}" if fields else ""
    if code == WAITING:
        limit, key, wait = extra
        fields_text = f'"limit":{_s(limit)}'
        if key is not None:
            fields_text += f',"key":{_s(str(key)[:_MESSAGE_LIMIT])}'
        if wait is not None:
            fields_text += f',"wait":{wait!r}'
        return "{" + fields_text + "}"
    if code in (REVOKED, REJECTED, DEAD_LETTERED):
        reason, requeue = extra if code == REJECTED else (extra, None)
        fields_text = f'"reason":{_s(str(reason)[:_MESSAGE_LIMIT])}'
        if requeue is not None:
            fields_text += f',"requeue":{"true" if requeue else "false"}'
        return "{" + fields_text + "}"
    return ""


# '["task-received",' ...: an event's array up to its time offset.
_OPENERS: Final = tuple(f'["{kind}",' for kind in TASK_EVENT_TYPES)


def _events(group: list[Record], t0: float) -> str:
    """A task's events as JSON arrays: [type, µs after t0] or [type, µs, runtime µs | {fields}]."""
    parts = []
    for record in group:
        code, offset, extra = record[0], int((record[1] - t0) * 1e6), record[8]
        if code == SUCCEEDED:
            parts.append(f"{_OPENERS[code]}{offset},{int(extra * 1e6)}]")
            continue
        details = _details(code, extra)
        parts.append(f"{_OPENERS[code]}{offset},{details}]" if details else f"{_OPENERS[code]}{offset}]")
    return ",".join(parts)


def _task(group: list[Record], t0: float, names: dict[tuple[str | None, str], str]) -> str:
    """One task's entry: what it is, once, and its events of this batch."""
    _, _, task_id, retries, name, queue, root_id, parent_id, _ = group[0]
    key = (name, queue)
    name_queue = names.get(key)
    if name_queue is None:
        name_queue = names[key] = f'"name":{_s(name)},"queue":{_s(queue)}'
    ident = _s(task_id)
    root = ident if root_id == task_id else _s(root_id)
    head = f'{{"uuid":{ident},{name_queue},"retries":{retries},"root_id":{root},"parent_id":{_s(parent_id)}'
    for record in group:
        if record[0] in (SENT, RECEIVED):  # the message's own fields, given when it was taken
            head += record[8]
            break
    return f'{head},"events":[{_events(group, t0)}]}}'


def _other(code: int, timestamp: float, fields: dict[str, Any]) -> str:
    body = {"type": EVENT_TYPES[code], "timestamp": timestamp, **fields}
    if code == ONLINE:
        body.setdefault("sw_ident", "asyncq")
        body.setdefault("sw_ver", __version__)
    return json_dumps(body).decode()


def encode_batch(hostname: str, pid: int, records: Sequence[Record]) -> bytes:
    """One batch's wire bytes (docs/protocol.md): its task events grouped by task, then the others."""
    t0 = records[0][1] if records else 0.0
    tasks: dict[str, list[Record]] = {}
    others: list[str] = []
    for record in records:
        if record[0] >= ONLINE:
            others.append(_other(record[0], record[1], record[8]))
            continue
        group = tasks.get(record[2])
        if group is None:
            tasks[record[2]] = [record]
        else:
            group.append(record)
    names: dict[tuple[str | None, str], str] = {}
    parts = []
    quote = encode_basestring
    for group in tasks.values():
        if len(group) == 3:
            first, second, third = group
            if (
                first[0] == RECEIVED
                and second[0] == STARTED
                and third[0] == SUCCEEDED
                and first[3] == third[3]
            ):
                # The usual case in one template (it is most of a busy worker's events).
                _, t1, task_id, retries, name, queue, root_id, parent_id, fields = first
                name_queue = names.get((name, queue))
                if name_queue is None:
                    name_queue = names[(name, queue)] = f'"name":{_s(name)},"queue":{_s(queue)}'
                ident = quote(task_id)
                root = ident if root_id == task_id else _s(root_id)
                parent = "null" if parent_id is None else quote(parent_id)
                parts.append(
                    f'{{"uuid":{ident},{name_queue},"retries":{retries},"root_id":{root},'
                    f'"parent_id":{parent}{fields},"events":[["task-received",{int((t1 - t0) * 1e6)}],'
                    f'["task-started",{int((second[1] - t0) * 1e6)}],'
                    f'["task-succeeded",{int((third[1] - t0) * 1e6)},{int(third[8] * 1e6)}]]}}'
                )
                continue
        attempts: dict[int, list[Record]] = {}  # one id, several attempts (retries) in a batch
        for record in group:
            attempts.setdefault(record[3], []).append(record)
        parts += [_task(attempt, t0, names) for attempt in attempts.values()]
    return (
        f'{{"v":{EVENTS_VERSION},"hostname":{_s(hostname)},"pid":{pid},"t0":{t0!r},'
        f'"tasks":[{",".join(parts)}],"events":[{",".join(others)}]}}'
    ).encode()


def decode_batch(data: bytes) -> list[dict[str, Any]]:
    """The events of one batch, each with its batch's ``hostname`` and ``pid``.

    Raises:
        SerializationError: not a batch of a version this asyncq reads.
    """
    try:
        batch = json.loads(data)
    except ValueError as exc:
        raise SerializationError(f"an event batch is not JSON: {exc}") from None
    if not isinstance(batch, dict):
        raise SerializationError("an event batch must be a JSON object")
    if batch.get("v") != EVENTS_VERSION:
        raise SerializationError(f"unsupported event batch version {batch.get('v')!r}; this asyncq reads 1")
    common = {"hostname": batch.get("hostname"), "pid": batch.get("pid")}
    found: list[dict[str, Any]] = []
    try:
        t0 = float(batch.get("t0") or 0.0)
        for task in batch.get("tasks") or ():
            fields = {key: value for key, value in task.items() if key != "events"}
            args = {key: fields.pop(key) for key in ("args", "kwargs") if key in fields}
            for kind, offset, *details in task["events"]:
                event = {**common, "type": kind, "timestamp": round(t0 + offset / 1e6, 6), **fields}
                if args and kind in ("task-sent", "task-received"):
                    event.update(args)
                if details:
                    extra = details[0]
                    event.update({"runtime": extra / 1e6} if isinstance(extra, int) else extra)
                found.append(event)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"a malformed task entry in an event batch: {exc!r}") from None
    found += [{**common, **event} for event in batch.get("events") or () if isinstance(event, dict)]
    found.sort(key=lambda event: event.get("timestamp") or 0.0)
    return found
