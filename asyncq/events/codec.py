"""Monitoring events on the wire: a batch is one JSON object per flush (schema: docs/protocol.md).

Emitters record events as cheap tuples on the hot path (``Record``); encoding happens once per
flush, here, with hand-written JSON templates: they cost about half of building dicts for
``json.dumps``, and the events of a busy worker are the thing that must stay cheap. Decoding
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
    "decode_batch",
    "encode_batch",
]

EVENTS_VERSION: Final = 1

# Record codes: the index into TYPES.
SENT, RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REVOKED, REJECTED, DEAD_LETTERED = range(9)
ONLINE, HEARTBEAT, OFFLINE = 9, 10, 11
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
)
WORKER_EVENT_TYPES: Final = ("worker-online", "worker-heartbeat", "worker-offline")
EVENT_TYPES: Final = TASK_EVENT_TYPES + WORKER_EVENT_TYPES

#: (code, message or None, timestamp, extra): extra is the runtime (succeeded), the exception
#: (failed, retried), the reason (revoked, rejected, dead-lettered), a dict of fields (worker
#: events, and a dead letter without a decodable message), or None.
Record = tuple[int, "Message | None", float, Any]

_MESSAGE_LIMIT: Final = 1000  # characters of an exception message or reason kept in an event


def _s(text: str | None) -> str:
    return "null" if text is None else encode_basestring(text)


def _exception(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not lose the event
        text = repr(exc)
    return f',"exception_type":{_s(name)},"exception_message":{_s(text[:_MESSAGE_LIMIT])}'


def _arguments(message: Message) -> str:
    try:
        return f',"args":{json_dumps(message.args).decode()},"kwargs":{json_dumps(message.kwargs).decode()}'
    except SerializationError:  # not JSON-able (a pickle task): say so rather than fail the batch
        return ',"args":"<not JSON>","kwargs":"<not JSON>"'


def _details(code: int, extra: Any) -> str:
    """The fields one task event adds to its task's, as JSON object text ("" for none)."""
    if code in (SENT, RECEIVED, STARTED):
        return ""
    if code == SUCCEEDED:
        return f'{{"runtime":{extra!r}}}'
    if code == FAILED:
        exc, runtime = extra
        return f'{{"runtime":{runtime!r}{_exception(exc)}}}'
    if code == RETRIED:
        exc, eta = extra
        fields = "" if eta is None else f',"retry_eta":{eta!r}'
        fields += "" if exc is None else _exception(exc)
        return "{" + fields[1:] + "}" if fields else ""
    reason, requeue = extra if code == REJECTED else (extra, None)
    fields = f'"reason":{_s(str(reason)[:_MESSAGE_LIMIT])}'
    if requeue is not None:
        fields += f',"requeue":{"true" if requeue else "false"}'
    return "{" + fields + "}"


def _task(message: Message, events: list[str], include_args: bool) -> str:
    """One task's entry: what it is, once, and its events of this batch."""
    head = (
        f'{{"uuid":{_s(message.id)},"name":{_s(message.task)},"queue":{_s(message.queue)},'
        f'"retries":{message.retries},"root_id":{_s(message.root_id)},"parent_id":{_s(message.parent_id)}'
    )
    if message.eta is not None:
        head += f',"eta":{message.eta!r}'
    if message.expires is not None:
        head += f',"expires":{message.expires!r}'
    if include_args:
        head += _arguments(message)
    return f'{head},"events":[{",".join(events)}]}}'


def _other(code: int, timestamp: float, fields: dict[str, Any]) -> str:
    body = {"type": EVENT_TYPES[code], "timestamp": timestamp, **fields}
    if code == ONLINE:
        body.setdefault("sw_ident", "asyncq")
        body.setdefault("sw_ver", __version__)
    return json_dumps(body).decode()


def encode_batch(hostname: str, pid: int, records: Sequence[Record], *, include_args: bool) -> bytes:
    """One batch's wire bytes (docs/protocol.md): its task events grouped by task, then the others."""
    tasks: dict[int, tuple[Message, list[str]]] = {}  # by id(): a message object is one attempt
    others: list[str] = []
    for code, message, timestamp, extra in records:
        if message is None:
            others.append(_other(code, timestamp, extra or {}))
            continue
        entry = tasks.get(id(message))
        if entry is None:
            entry = tasks[id(message)] = (message, [])
        details = _details(code, extra)
        event = f'["{TASK_EVENT_TYPES[code]}",{timestamp!r}' + (f",{details}]" if details else "]")
        entry[1].append(event)
    parts = [_task(message, events, include_args) for message, events in tasks.values()]
    return (
        f'{{"v":{EVENTS_VERSION},"hostname":{_s(hostname)},"pid":{pid},'
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
        for task in batch.get("tasks") or ():
            fields = {key: value for key, value in task.items() if key != "events"}
            args = {key: fields.pop(key) for key in ("args", "kwargs") if key in fields}
            for kind, timestamp, *details in task["events"]:
                event = {**common, "type": kind, "timestamp": timestamp, **fields}
                if args and kind in ("task-sent", "task-received"):
                    event.update(args)
                if details:
                    event.update(details[0])
                found.append(event)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"a malformed task entry in an event batch: {exc!r}") from None
    found += [{**common, **event} for event in batch.get("events") or () if isinstance(event, dict)]
    found.sort(key=lambda event: event.get("timestamp") or 0.0)
    return found
