"""Celery's message protocol v2 and its result records, as plain data (no Celery import).

A Celery message on Redis is kombu's JSON envelope: ``body`` (base64 of the serialized
``[args, kwargs, embed]``), ``headers`` (Celery's task headers: ``task``, ``id``, ``eta``,
``expires``, ``retries``, ``root_id``, ``parent_id``, ...) and ``properties`` (correlation
id, reply_to, delivery info, priority). Results are Celery's meta dicts
(``status``/``result``/``traceback``/``children``/``date_done``/``task_id``); a failure's
``result`` is an exception record (``exc_type``/``exc_message``/``exc_module``) from which
Celery rebuilds the exception class when it can import its module.
Spec: https://docs.celeryq.dev/en/stable/internals/protocol.html
"""

from __future__ import annotations

import base64
import json
import os
import socket
import traceback as tb
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncq.exceptions import SerializationError

__all__ = [
    "CeleryTask",
    "decode_envelope",
    "encode_envelope",
    "exception_record",
    "follow_ups",
    "from_iso",
    "rebuild_exception",
    "result_meta",
    "to_iso",
]

_JSON = "application/json"


@dataclass(slots=True)
class CeleryTask:
    """One task message of Celery's protocol v2, decoded.

    Attributes:
        id / task: the task id and the Celery task name.
        eta / expires: epoch seconds, or None.
        retries: how many times it was retried already.
        root_id / parent_id / group_id: the workflow ids Celery carries.
        headers: every header as sent (unknown ones kept).
        embed: the body's third item (callbacks, errbacks, chain, chord).
        reply_to / correlation_id / priority: from the envelope's properties.
    """

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    ignore_result: bool = False
    timelimit: tuple[float | None, float | None] = (None, None)
    headers: dict[str, Any] = field(default_factory=dict)
    embed: dict[str, Any] = field(default_factory=dict)
    reply_to: str = ""
    correlation_id: str = ""
    priority: int = 0


def to_iso(epoch: float | None) -> str | None:
    """Epoch seconds as the ISO-8601 UTC text Celery puts in ``eta`` / ``expires``."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def from_iso(text: Any) -> float | None:
    """Celery's ISO-8601 ``eta`` / ``expires`` (naive means UTC) as epoch seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise SerializationError(f"bad Celery timestamp {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def decode_envelope(raw: bytes | str) -> tuple[dict[str, Any], CeleryTask]:
    """Decode one kombu envelope holding a protocol-v2 task; returns (envelope, task).

    Raises:
        SerializationError: not JSON, not protocol v2, or a body that is not JSON.
    """
    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        properties = envelope.get("properties") or {}
        content_type = envelope.get("content-type", _JSON)
    except (ValueError, AttributeError) as exc:
        raise SerializationError(f"not a kombu message: {exc}") from exc
    if "task" not in headers or "id" not in headers:
        raise SerializationError("not a Celery protocol v2 message (no task/id header)")
    if content_type != _JSON:
        raise SerializationError(f"content type {content_type!r} not accepted (only {_JSON})")
    try:
        body: Any = envelope.get("body", "")
        if properties.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args, kwargs, embed = decoded
    except (ValueError, TypeError) as exc:
        raise SerializationError(f"undecodable Celery body: {exc}") from exc
    soft, hard = (headers.get("timelimit") or [None, None])[:2]
    task = CeleryTask(
        id=str(headers["id"]),
        task=str(headers["task"]),
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        eta=from_iso(headers.get("eta")),
        expires=from_iso(headers.get("expires")),
        retries=int(headers.get("retries") or 0),
        root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"),
        group_id=headers.get("group"),
        ignore_result=bool(headers.get("ignore_result")),
        timelimit=(soft, hard),
        headers=dict(headers),
        embed=dict(embed or {}),
        reply_to=str(properties.get("reply_to") or ""),
        correlation_id=str(properties.get("correlation_id") or headers["id"]),
        priority=int(properties.get("priority") or 0),
    )
    return envelope, task


def encode_envelope(task: CeleryTask, *, queue: str, exchange: str = "") -> bytes:
    """Encode ``task`` as the kombu envelope a Celery worker reads from ``queue``."""
    body = json.dumps(
        [
            task.args,
            task.kwargs,
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None, **task.embed},
        ]
    ).encode()
    headers = {
        **task.headers,
        "lang": "py",
        "task": task.task,
        "id": task.id,
        "shadow": task.headers.get("shadow"),
        "eta": to_iso(task.eta),
        "expires": to_iso(task.expires),
        "group": task.group_id,
        "group_index": task.headers.get("group_index"),
        "retries": task.retries,
        "timelimit": list(task.timelimit),
        "root_id": task.root_id or task.id,
        "parent_id": task.parent_id,
        "argsrepr": repr(task.args),
        "kwargsrepr": repr(task.kwargs),
        "origin": task.headers.get("origin") or f"asyncq{os.getpid()}@{socket.gethostname()}",
        "ignore_result": task.ignore_result,
    }
    headers.setdefault("stamped_headers", None)
    headers.setdefault("stamps", {})
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": _JSON,
        "headers": headers,
        "properties": {
            "correlation_id": task.id,
            "reply_to": task.reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": exchange, "routing_key": queue},
            "priority": task.priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def follow_ups(message: CeleryTask, *, succeeded: bool, result: Any = None) -> list[tuple[str, CeleryTask]]:
    """The messages a Celery worker sends when ``message`` ends, each with its queue ('' = unset).

    On success: every ``link`` signature with the result as its first argument (unless
    immutable), and the next step of the chain, which carries the rest of the chain. On
    failure: every ``link_error`` signature with the failed task's id as its first argument
    (Celery's form for an errback it does not run in-process). Nested canvas (a group or
    chord as a link) is refused with :class:`SerializationError`.
    """
    embed = message.embed
    plan: list[tuple[dict[str, Any], list[Any], list[Any] | None]] = []
    if succeeded:
        plan += [(link, [result], None) for link in embed.get("callbacks") or []]
        chain = list(embed.get("chain") or [])
        if chain:
            step = chain.pop()  # Celery keeps a chain's remaining steps last-first
            plan.append((step, [result], chain))
    else:
        plan += [(link, [message.id], None) for link in embed.get("errbacks") or []]
    sent = []
    for sig, leading, chain_rest in plan:
        if not isinstance(sig, dict) or "task" not in sig or sig.get("subtask_type"):
            raise SerializationError(f"cannot send Celery signature {sig!r}: only plain task signatures")
        options = dict(sig.get("options") or {})
        args = list(sig.get("args") or [])
        sent.append(
            (
                str(options.get("queue") or ""),
                CeleryTask(
                    id=str(options.get("task_id") or uuid.uuid4()),
                    task=str(sig["task"]),
                    args=args if sig.get("immutable") else [*leading, *args],
                    kwargs=dict(sig.get("kwargs") or {}),
                    root_id=message.root_id or message.id,
                    parent_id=message.id,
                    embed={
                        "callbacks": options.get("link"),
                        "errbacks": options.get("link_error"),
                        "chain": chain_rest or None,
                    },
                    # The caller's rpc:// reply queue: a chain's last result reaches the caller.
                    reply_to=message.reply_to,
                    priority=int(options.get("priority") or 0),
                ),
            )
        )
    return sent


def exception_record(exc: BaseException) -> dict[str, Any]:
    """The record Celery stores for a failure; Celery rebuilds ``exc_module.exc_type(*exc_message)``."""
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": [_jsonable(arg) for arg in exc.args],
        "exc_module": cls.__module__,
    }


def rebuild_exception(record: Any) -> BaseException:
    """The exception a Celery failure record describes: its own class when it is importable.

    Only classes already imported and deriving from BaseException are used (a record cannot
    make us import a module or call an arbitrary callable); otherwise a stand-in class with
    the same name is made.
    """
    import sys

    if not isinstance(record, dict) or "exc_type" not in record:
        return Exception(repr(record))
    name = str(record["exc_type"])
    message = record.get("exc_message")
    args = list(message) if isinstance(message, (list, tuple)) else [message]
    found: Any = sys.modules.get(str(record.get("exc_module") or "builtins"))
    for part in name.split("."):
        found = getattr(found, part, None) if found is not None else None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        found = type(name.rsplit(".", 1)[-1], (Exception,), {"__module__": "asyncq.celery.remote"})
    try:
        return found(*args)  # type: ignore[no-any-return]
    except Exception:  # a class whose constructor takes other arguments
        return Exception(f"{name}({', '.join(map(repr, args))})")


def result_meta(
    task_id: str,
    status: str,
    *,
    result: Any = None,
    exc: BaseException | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Celery's result record for ``task_id`` in ``status`` (the value of ``celery-task-meta-<id>``)."""
    traceback = None
    if exc is not None:
        result = exception_record(exc)
        traceback = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": datetime.now(UTC).isoformat() if status in _READY else None,
        "task_id": task_id,
        **(extra or {}),
    }


_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
