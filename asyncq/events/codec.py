"""Monitoring events on the wire: a batch is one JSON object per flush (schema: docs/protocol.md).

Emitters record events on the hot path as rows of atomic values in one flat list (``Record``):
a task's received, started and succeeded share a row. Encoding happens once per flush, here.
A batch (version 2) is that table stored by column: each column is a slice of the flat buffer
turned into JSON by one ``str.join`` (times as integer nanoseconds after the batch's ``t0``,
runtimes as integer microseconds, strings checked for escapes in one C pass), about a quarter
of the cost and size of an object per task: the events of a busy worker are the thing that
must stay cheap. Decoding (readers only) expands a batch back into the documented event dicts,
each with its batch's ``hostname`` and ``pid``; version 1 batches too (:mod:`asyncq.events.legacy`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Final

import asyncq.events.legacy as legacy
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
    "STRIDE",
    "Record",
    "arguments_json",
    "decode_batch",
    "encode_batch",
    "exception_fields",
]

#: The batch format written (docs/protocol.md); readers also take version 1.
EVENTS_VERSION: Final = 2

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

#: One row of an emitter's buffer, made of atomic values only (str, int, float, None): CPython
#: stops tracking such tuples at its first garbage collection, so a buffer of them costs the
#: collector nothing, where rows holding the Message would keep every one alive into the older
#: generations (measured: most of what events cost a busy worker). Times are nanoseconds after
#: the buffer's start (``time.time_ns()``); a runtime is integer microseconds.
#: A task row: ``(code, time, id, retries, name, queue, root_id, parent_id, extra, started,
#: succeeded, runtime)``: its first event (``code`` at ``time``), then the times of the
#: task-started and task-succeeded events written into it when they come before the flush
#: (None until then), and the runtime of its task-succeeded. A worker event: ``(code, time, "",
#: 0, "", "", None, None, fields, None, None, None)``. ``extra`` by code: SENT, RECEIVED: JSON
#: text, ``,"eta":..,"expires":..,"args":..,"kwargs":..`` (each only when there), else "";
#: FAILED: (exception type, message, runtime); RETRIED: (exception type or None, message, retry
#: eta); REVOKED, DEAD_LETTERED: the reason; REJECTED: (reason, requeue); WAITING: (the limit,
#: its key or None, the wait in seconds or None); STARTED, SUCCEEDED (rows of their own, after
#: a flush): None.
Record = tuple[
    int, int, str, int, "str | None", str, "str | None", "str | None", Any, "int | None", "int | None", Any
]
#: Values per row: an emitter's buffer is its rows, flattened, STRIDE values each.
STRIDE: Final = 12

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
    """The fields a (less common) task event adds to its task's, as JSON object text."""
    if code == FAILED:
        kind, text, runtime = extra
        return f'{{"runtime":{runtime!r},"exception_type":{_s(kind)},"exception_message":{_s(text)}}}'
    if code == RETRIED:
        kind, text, eta = extra
        fields = [] if eta is None else [f'"retry_eta":{eta!r}']
        if kind is not None:
            fields.append(f'"exception_type":{_s(kind)},"exception_message":{_s(text)}')
        return "{" + ",".join(fields) + "}"
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
    return "{}"


# What a JSON string must escape (with '"'): a column free of them is joined into JSON as is.
_ESCAPED: Final = bytes(range(32)) + b'\\"'
# The codes of rows that have no fields of their own when their extra is "" or None.
_PLAIN: Final = (SENT, RECEIVED, STARTED, SUCCEEDED)


def _strings(values: Sequence[str | None]) -> str:
    """A JSON array of strings (or nulls): one join when none needs escaping, as is usual."""
    try:
        text = '","'.join(values)  # type: ignore[arg-type]  # a None raises TypeError: the slow way
    except TypeError:
        return "[" + ",".join(map(_s, values)) + "]"
    # One pass in C: deleting what would need escaping removes exactly the separators' quotes.
    raw = text.encode()
    if text.isascii() and len(raw) - len(raw.translate(None, _ESCAPED)) == 2 * len(values) - 2:
        return f'["{text}"]'
    return "[" + ",".join(map(_s, values)) + "]"


def _column(values: list[Any]) -> str:
    """A column of strings, or of ints: the one value of every row, or an array of one per row."""
    first = values[0]
    if values.count(first) == len(values):
        return str(first) if first.__class__ is int else _s(first)
    return "[" + ",".join(map(str, values)) + "]" if first.__class__ is int else _strings(values)


def _numbers(values: list[int | None]) -> str:
    """A column of integers, null where there is none: one %-format in C.

    ``"%s,%s,..." % tuple(values)`` writes each int straight into one string, about twice as
    fast as joining ``map(str, values)`` (a str object per value); these columns are most of
    what encoding costs.
    """
    count = len(values)
    nulls = values.count(None)
    if nulls == count:
        return "null"
    text = _formats(count) % tuple(values)
    return f"[{text.replace('None', 'null') if nulls else text}]"


@functools.lru_cache(maxsize=8)
def _formats(count: int) -> str:
    """``"%s,%s,...%s"`` for ``count`` values (kept: a batch's columns are all the same length)."""
    return ",".join(("%s",) * count)


def _fields(codes: list[int], extras: list[Any]) -> str:
    """``[row, {fields}]`` of the rows whose first event has fields of its own (the less common ones)."""
    found = []
    for row, (code, extra) in enumerate(zip(codes, extras, strict=True)):
        if code in (SENT, RECEIVED):
            if extra:  # ',"eta":...': the message's own fields, as JSON text
                found.append(f"[{row},{{{extra[1:]}}}]")
        elif code not in (STARTED, SUCCEEDED):
            found.append(f"[{row},{_details(code, extra)}]")
    return ",".join(found)


def _rows(flat: list[Any]) -> str:
    """The ``tasks`` columns and the ``fields`` of a batch's task rows (no worker events among them)."""
    codes, uuids, roots, extras = flat[0::STRIDE], flat[2::STRIDE], flat[6::STRIDE], flat[8::STRIDE]
    root = '{"same_as":"uuid"}' if roots == uuids else _column(roots)
    # The usual batch's rows have no fields (received: "", a row of its own: None): counted in C.
    plain_rows = sum(map(codes.count, _PLAIN))
    is_plain = plain_rows == len(codes) and extras.count("") + extras.count(None) == len(extras)
    return (
        f'"tasks":{{"type":{_column(codes)},"time":{_numbers(flat[1::STRIDE])},'
        f'"started":{_numbers(flat[9::STRIDE])},"succeeded":{_numbers(flat[10::STRIDE])},'
        f'"runtime":{_numbers(flat[11::STRIDE])},"uuid":{_strings(uuids)},"name":{_column(flat[4::STRIDE])},'
        f'"queue":{_column(flat[5::STRIDE])},"retries":{_column(flat[3::STRIDE])},"root_id":{root},'
        f'"parent_id":{_column(flat[7::STRIDE])}}},"fields":[{"" if is_plain else _fields(codes, extras)}]'
    )


def _worker_event(code: int, timestamp: float, fields: dict[str, Any]) -> str:
    body = {"type": EVENT_TYPES[code], "timestamp": timestamp, **fields}
    if code == ONLINE:
        body.setdefault("sw_ident", "asyncq")
        body.setdefault("sw_ver", __version__)
    return json_dumps(body).decode()


def encode_batch(hostname: str, pid: int, flat: list[Any], t0: int) -> bytes:
    """One batch's wire bytes (docs/protocol.md) from a flat buffer of rows (``STRIDE`` values each),
    whose times are nanoseconds after ``t0`` (``time.time_ns()``)."""
    codes = flat[0::STRIDE]
    workers = ""
    if codes and max(codes) >= ONLINE:  # a worker event (one every heartbeat): taken out the slow way
        rows = [flat[at : at + STRIDE] for at in range(0, len(flat), STRIDE)]
        workers = ",".join(_worker_event(r[0], (t0 + r[1]) / 1e9, r[8]) for r in rows if r[0] >= ONLINE)
        flat = [value for r in rows if r[0] < ONLINE for value in r]
    tasks = _rows(flat) if flat else '"tasks":{"uuid":[]},"fields":[]'
    return (
        f'{{"v":{EVENTS_VERSION},"hostname":{_s(hostname)},"pid":{pid},"t0":{t0},{tasks},"workers":[{workers}]}}'
    ).encode()


def decode_batch(data: bytes) -> list[dict[str, Any]]:
    """The events of one batch (version 2, or 1), each with its batch's ``hostname`` and ``pid``.

    Raises:
        SerializationError: not a batch of a version this asyncq reads.
    """
    try:
        batch = json.loads(data)
    except ValueError as exc:
        raise SerializationError(f"an event batch is not JSON: {exc}") from None
    if not isinstance(batch, dict):
        raise SerializationError("an event batch must be a JSON object")
    version = batch.get("v")
    if version not in (1, EVENTS_VERSION):
        raise SerializationError(f"unsupported event batch version {version!r}; this asyncq reads 1 and 2")
    common = {"hostname": batch.get("hostname"), "pid": batch.get("pid")}
    found = legacy.decode_v1(batch, common) if version == 1 else _decode(batch, common)
    found.sort(key=lambda event: event.get("timestamp") or 0.0)
    return found


# A row's columns, in the order a reader expands them (``same_as`` names an earlier one).
_TASK_FIELDS: Final = ("uuid", "name", "queue", "retries", "root_id", "parent_id")
_COLUMNS: Final = ("uuid", "type", "time", "started", "succeeded", "runtime", *_TASK_FIELDS[1:])


def _expand(value: Any, columns: dict[str, list[Any]], count: int) -> list[Any]:
    """A column's values: an array as is, ``{"same_as": column}``, or one value for every row."""
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"a column of {len(value)} values for {count} rows")
        return value
    if isinstance(value, dict):
        return columns[value["same_as"]]
    return [value] * count


def _decode(batch: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    try:
        table = batch["tasks"]
        count = len(table["uuid"])
        columns: dict[str, list[Any]] = {}
        for name in _COLUMNS:
            columns[name] = _expand(table.get(name), columns, count)
        fields: dict[int, dict[str, Any]] = {row: dict(extra) for row, extra in batch.get("fields") or ()}
        values = zip(*[columns[name] for name in _TASK_FIELDS], strict=True)
        tasks = [dict(zip(_TASK_FIELDS, task, strict=True)) for task in values]
        codes = columns["type"]
        # The message's eta and expires, given with its task-sent or task-received: on every
        # event of that attempt in the batch.
        given: dict[tuple[str, int], dict[str, Any]] = {}
        for row, extra in fields.items():
            if codes[row] in (SENT, RECEIVED) and ("eta" in extra or "expires" in extra):
                key = (tasks[row]["uuid"], tasks[row]["retries"])
                given[key] = {name: extra.pop(name) for name in ("eta", "expires") if name in extra}
        if given:
            for task in tasks:
                task.update(given.get((task["uuid"], task["retries"]), {}))
        t0 = int(batch["t0"])  # nanoseconds: exact as an int, a float only once added up
        times = (columns[name] for name in ("time", "started", "succeeded", "runtime"))
        for row, (code, offset, started, succeeded, runtime) in enumerate(zip(codes, *times, strict=True)):
            task = tasks[row]
            event = {**common, "type": TASK_EVENT_TYPES[code], "timestamp": (t0 + offset) / 1e9, **task}
            if code == SUCCEEDED:
                event["runtime"] = runtime / 1e6
            own = fields.get(row)
            if own:
                event.update(own)
            found.append(event)
            if started is not None:
                found.append({**common, "type": "task-started", "timestamp": (t0 + started) / 1e9, **task})
            if succeeded is not None:
                end = {**common, "type": "task-succeeded", "timestamp": (t0 + succeeded) / 1e9, **task}
                end["runtime"] = runtime / 1e6
                found.append(end)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"a malformed event batch: {exc!r}") from None
    found += [{**common, **event} for event in batch.get("workers") or () if isinstance(event, dict)]
    return found
