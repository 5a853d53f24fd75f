"""The task message envelope, version 1: the contract described in docs/protocol.md.

A message is a JSON object. With the default JSON content type the task's ``args`` and
``kwargs`` sit inline in the envelope, so any language with a JSON library can enqueue a
task. With a binary serializer (msgpack, pickle) they travel instead as ``body``: the
base64 of the serialized ``[args, kwargs]`` pair, with ``body_encoding: "base64"``.
"""

from __future__ import annotations

import base64
import json.encoder
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from asyncq.exceptions import SerializationError
from asyncq.serializers import Serializers, json_dumps, json_loads, json_text, utf8

__all__ = ["PROTOCOL_VERSION", "SENT_AT", "Message", "decode_message", "encode_message"]

PROTOCOL_VERSION: Final = 1
_JSON: Final = "application/json"
#: The header with the epoch time a producer sent the message (``task_send_sent_time``).
SENT_AT: Final = "sent_at"
_MAX_EPOCH: Final = 253402300799  # 9999-12-31T23:59:59Z
# A JSON string as json_dumps writes one (not ASCII-escaped).
_quote: Final = json.encoder.encode_basestring


@dataclass(slots=True)
class Message:
    """One task invocation as it travels through a broker.

    Times (``eta``, ``expires``) are epoch seconds here and ISO 8601 strings on the wire.
    Canvas slots (``callbacks``, ``errbacks``, ``chain``, ``chord``) hold serialized
    signatures (plain dicts); the worker reads them, the broker never does.
    """

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    priority: int | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    ignore_result: bool = False
    content_type: str = _JSON


def _time_out(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def _time_in(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Epoch seconds: accepted for producers in other languages, within the years ISO 8601 can
        # write; NaN or 1e308 would otherwise overflow a broker's delay arithmetic downstream.
        if not -_MAX_EPOCH <= value <= _MAX_EPOCH:  # False for NaN too
            raise SerializationError(f"message field {name!r} is not a usable epoch time: {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise SerializationError(f"message field {name!r} is not an ISO 8601 time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # the protocol says: naive times are UTC
        return parsed.timestamp()
    raise SerializationError(f"message field {name!r} must be an ISO 8601 string, got {type(value).__name__}")


def encode_message(message: Message, serializers: Serializers, *, encrypt: bool = False) -> bytes:
    """Encode a message to its wire bytes (always a JSON envelope).

    Fields at their default value are left out: the protocol defines the defaults, and a
    smaller envelope is cheaper to encode, carry and decode. With ``encrypt`` the arguments
    travel sealed by ``serializers.cipher`` (see docs/protocol.md, "Encrypted arguments").
    """
    if (
        message.content_type == _JSON
        and not encrypt
        and not message.retries
        and message.eta is None
        and message.expires is None
        and message.priority is None
        and (not message.headers or _only_sent_at(message.headers))
        and message.parent_id is None
        and message.group_id is None
        and message.callbacks is None
        and message.errbacks is None
        and message.chain is None
        and message.chord is None
    ):
        return _encode_plain(message)
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": message.id, "task": message.task}
    if message.content_type == _JSON and not encrypt:
        envelope["args"] = message.args
        envelope["kwargs"] = message.kwargs
    else:
        serializer = serializers.get(message.content_type)
        body = serializer.dumps([list(message.args), message.kwargs])
        if encrypt:
            if serializers.cipher is None:
                raise SerializationError("cannot encrypt: security_encryption_key is not set")
            envelope["encryption"], body = serializers.cipher.seal(body, _aad(message.id, message.task))
        envelope["content_type"] = serializer.content_type
        envelope["body"] = base64.b64encode(body).decode("ascii")
        envelope["body_encoding"] = "base64"
    envelope["queue"] = message.queue
    if message.retries:
        envelope["retries"] = message.retries
    if message.eta is not None:
        envelope["eta"] = _time_out(message.eta)
    if message.expires is not None:
        envelope["expires"] = _time_out(message.expires)
    if message.priority is not None:
        envelope["priority"] = message.priority
    if message.headers:
        envelope["headers"] = message.headers
    for name in _OPTIONAL_SLOTS:
        value = getattr(message, name)
        if value is not None:
            envelope[name] = value
    if message.ignore_result:
        envelope["ignore_result"] = True
    return json_dumps(envelope)


def _encode_plain(message: Message) -> bytes:
    """The envelope of a plain JSON message (a root call, no options, at most the send-time
    stamp in its headers) as text around its arguments.

    The bytes are those the envelope dict gives (tests/unit/test_message.py pins it), in one
    encoder call for the arguments instead of one for a dict of every field.
    """
    root_id = message.root_id
    # '{"args":[...],"kwargs":{...}}' less its braces: the two fields as the dict writes them.
    arguments = json_text({"args": message.args, "kwargs": message.kwargs})[1:-1]
    # The producer's send-time stamp (task_send_sent_time, on by default) is the one header
    # written here: a float's JSON is its repr.
    stamp = f',"headers":{{"sent_at":{message.headers[SENT_AT]!r}}}' if message.headers else ""
    root = "" if root_id is None else f',"root_id":{_quote(root_id)}'
    end = ',"ignore_result":true}' if message.ignore_result else "}"
    return utf8(
        f'{{"v":1,"id":{_quote(message.id)},"task":{_quote(message.task)},{arguments},'
        f'"queue":{_quote(message.queue)}{stamp}{root}{end}'
    )


def _only_sent_at(headers: dict[str, Any]) -> bool:
    """The headers are the send-time stamp alone (what most messages carry), a finite float."""
    if len(headers) != 1:
        return False
    stamp = headers.get(SENT_AT)
    return type(stamp) is float and math.isfinite(stamp)


def _aad(task_id: str, task_name: str) -> bytes:
    # Binds sealed arguments to their message: moved into another envelope, they do not open.
    return f"asyncq:msg:{task_id}:{task_name}".encode()


_OPTIONAL_SLOTS: Final = ("root_id", "parent_id", "group_id", "callbacks", "errbacks", "chain", "chord")


def decode_message(data: bytes, serializers: Serializers) -> Message:
    """Decode wire bytes into a :class:`Message`.

    Raises:
        SerializationError: the bytes are not a valid envelope, the protocol version is
            unknown, or the body's content type is not accepted. The message says which.
    """
    envelope = json_loads(data)
    if not isinstance(envelope, dict):
        raise SerializationError(f"message is not a JSON object but {type(envelope).__name__}")
    version = envelope.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise SerializationError(f"unsupported message protocol version {version!r}; this asyncq speaks 1")
    try:
        task_id, task_name = envelope["id"], envelope["task"]
    except KeyError as exc:
        raise SerializationError(f"message lacks the required field {exc.args[0]!r}") from None
    if not isinstance(task_id, str) or not isinstance(task_name, str) or not task_name:
        raise SerializationError("message fields 'id' and 'task' must be non-empty strings")
    content_type = envelope.get("content_type") or _JSON
    if not isinstance(content_type, str):
        kind = type(content_type).__name__
        raise SerializationError(f"message field 'content_type' must be a string, got {kind}")
    if "body" in envelope:
        if envelope.get("body_encoding", "base64") != "base64":
            raise SerializationError(f"unknown body_encoding {envelope.get('body_encoding')!r}")
        try:
            raw = base64.b64decode(envelope["body"], validate=True)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError, as is non-ASCII text
            raise SerializationError(f"message body is not valid base64: {exc}") from None
        if "encryption" in envelope:
            if serializers.cipher is None:
                raise SerializationError("message is encrypted but security_encryption_key is not set")
            raw = serializers.cipher.open(envelope["encryption"], raw, _aad(task_id, task_name))
        decoded = serializers.loads(raw, content_type)
        if not (isinstance(decoded, _SEQUENCES) and len(decoded) == 2):
            raise SerializationError("message body must decode to an [args, kwargs] pair")
        args, kwargs = decoded
    else:
        if content_type != _JSON:
            raise SerializationError(f"message of content type {content_type!r} has no 'body'")
        if _JSON not in serializers.accepted:
            raise SerializationError("content type 'application/json' is not accepted (see accept_content)")
        args, kwargs = envelope.get("args", []), envelope.get("kwargs", {})
    if not isinstance(args, _SEQUENCES) or not isinstance(kwargs, dict):
        raise SerializationError("message 'args' must be a list and 'kwargs' an object")
    queue = envelope.get("queue") or "default"
    if type(args) is not list:
        args = list(args)  # a freshly decoded list needs no copy
    if type(queue) is not str:
        queue = str(queue)
    get = envelope.get
    headers, retries, priority = get("headers"), get("retries"), get("priority")
    ignore_result = get("ignore_result")
    if (
        (headers is None or type(headers) is dict)
        and (retries is None or type(retries) is int)
        and (priority is None or type(priority) is int)
        and (ignore_result is None or type(ignore_result) is bool)
        and get("eta") is None
        and get("expires") is None
    ):
        # The usual envelope: every optional field absent or already of its type, so the
        # message is built in one positional call (the field order of Message) with what the
        # per-field readers below would give. A freshly decoded headers dict needs no copy.
        return Message(
            task_id,
            task_name,
            args,
            kwargs,
            queue,
            retries or 0,
            None,
            None,
            priority,
            {} if headers is None else headers,
            get("root_id"),
            get("parent_id"),
            get("group_id"),
            get("callbacks"),
            get("errbacks"),
            get("chain"),
            get("chord"),
            ignore_result or False,
            content_type,
        )
    message = Message(
        id=task_id, task=task_name, args=args, kwargs=kwargs, queue=queue, content_type=content_type
    )
    try:
        # Only the fields present: an envelope leaves defaults out, so this loop is short.
        for name, value in envelope.items():
            read = _OPTIONAL_FIELDS.get(name)
            if read is not None and value is not None:
                setattr(message, name, read(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"message field {name!r} has the wrong type: {exc}") from None
    return message


#: A tuple, not ``list | tuple``: the union would be built again on every call.
_SEQUENCES: Final = (list, tuple)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value)


def _same(value: Any) -> Any:
    return value


def _eta(value: Any) -> float | None:
    return _time_in(value, "eta")


def _expires(value: Any) -> float | None:
    return _time_in(value, "expires")


#: Envelope fields beyond the required ones: how each is read into a Message attribute of
#: the same name. Unknown fields are ignored (a newer producer's additions).
_OPTIONAL_FIELDS: Final[dict[str, Any]] = {
    "retries": int,
    "eta": _eta,
    "expires": _expires,
    "priority": int,
    "headers": _dict,
    "root_id": _same,
    "parent_id": _same,
    "group_id": _same,
    "callbacks": _same,
    "errbacks": _same,
    "chain": _same,
    "chord": _same,
    "ignore_result": bool,
}
