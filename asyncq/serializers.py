"""Serializers: content type <-> encode/decode of task arguments and results.

JSON is the default. It round-trips, beyond plain JSON, ``datetime``, ``date``, ``time``,
``UUID``, ``Decimal``, ``bytes`` and ``set``/``frozenset`` by tagging them as
``{"__type__": <name>, "value": <text>}`` (documented in docs/protocol.md). Tuples become
lists, as in every JSON system. msgpack is optional (``asyncq[msgpack]``); pickle is
available only when the app lists it in ``accept_content``, because unpickling a message
runs arbitrary code.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from asyncq.exceptions import MissingDependencyError, SerializationError

if TYPE_CHECKING:
    from asyncq.security.encryption import Cipher

__all__ = [
    "CONTENT_TYPES",
    "Serializer",
    "Serializers",
    "json_dumps",
    "json_dumps_within",
    "json_text",
    "utf8",
    "json_loads",
]

_TAG: Final = "__type__"
_TAG_BYTES: Final = b'"__type__"'


def _json_default(obj: Any) -> Any:
    # Order matters: datetime is a subclass of date.
    if isinstance(obj, datetime):
        return {_TAG: "datetime", "value": obj.isoformat()}
    if isinstance(obj, date):
        return {_TAG: "date", "value": obj.isoformat()}
    if isinstance(obj, time):
        return {_TAG: "time", "value": obj.isoformat()}
    if isinstance(obj, uuid.UUID):
        return {_TAG: "uuid", "value": str(obj)}
    if isinstance(obj, Decimal):
        return {_TAG: "decimal", "value": str(obj)}
    if isinstance(obj, bytes | bytearray | memoryview):
        return {_TAG: "bytes", "value": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, set | frozenset):
        return {_TAG: "set", "value": list(obj)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "bytes": lambda v: base64.b64decode(v),
    "set": set,
}


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and _TAG in obj and "value" in obj:
        decoder = _DECODERS.get(obj[_TAG])
        if decoder is not None:
            return decoder(obj["value"])
    return obj


_DECODE_ERRORS: Final = (ValueError, UnicodeDecodeError, RecursionError, TypeError, ArithmeticError)


_ENCODER: Final = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)
_DECODER_TAGGED: Final = json.JSONDecoder(object_hook=_json_object_hook)
_DECODER: Final = json.JSONDecoder()
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


# The C encoder that _ENCODER.encode() builds anew on every call, built once. It skips the
# circular-reference bookkeeping: a cycle ends in RecursionError, and then _ENCODER, which
# does keep it, runs again to name the problem.
_C_ENCODE: Final[Callable[[Any, int], tuple[str, ...] | list[str]] | None] = (
    None
    if json.encoder.c_make_encoder is None  # type: ignore[attr-defined]
    else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _json_default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
)


def json_text(obj: Any) -> str:
    """Encode with asyncq's JSON conventions (compact, tagged extra types) as text.

    For a caller that writes more text around it; :func:`utf8` makes the bytes.
    """
    try:
        if _C_ENCODE is not None:
            try:
                return "".join(_C_ENCODE(obj, 0))
            except RecursionError:
                pass
        return _ENCODER.encode(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from exc


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (which JSON text may hold) is a SerializationError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from exc


def json_dumps(obj: Any) -> bytes:
    """Encode with asyncq's JSON conventions (compact, UTF-8, tagged extra types)."""
    return utf8(json_text(obj))


def json_dumps_within(prefix: str, obj: Any, suffix: str) -> bytes:
    """``prefix``, the JSON of ``obj`` (as :func:`json_dumps` writes it) and ``suffix``, as UTF-8.

    For a document written as text around one value (a task's SUCCESS record): one encoding
    to bytes instead of one for the value and another for the rest.
    """
    return utf8(prefix + json_text(obj) + suffix)


#: A tuple, not ``bytes | bytearray``: the union would be built again on every call.
_BYTES: Final = (bytes, bytearray)


def json_loads(data: bytes | str) -> Any:
    """Decode asyncq JSON; tagged objects become their Python types."""
    try:
        # Fast path: most payloads carry no tagged values, and the object hook costs a call per dict.
        if isinstance(data, _BYTES):
            tagged = _TAG_BYTES in data
            text = data.decode("utf-8")
        else:
            text = data
            tagged = _TAG in text
        if tagged:
            return _DECODER_TAGGED.decode(text)
        try:
            # What JSONDecoder.decode does, minus its two whitespace regexes: our own
            # documents have no whitespace around them. Anything else takes the full path.
            value, end = _SCAN(text, 0)
        except StopIteration:
            return _DECODER.decode(text)  # leading whitespace, or not JSON: it says which
        return value if end == len(text) else _DECODER.decode(text)
    except _DECODE_ERRORS as exc:
        # RecursionError: deeply nested input; TypeError/ArithmeticError: a tagged value of the wrong type.
        raise SerializationError(f"cannot decode JSON: {str(exc)[:200]}") from exc


@dataclass(frozen=True, slots=True)
class Serializer:
    """One encoding: a short name, its content type, and the two functions."""

    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    binary: bool


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError.for_extra("msgpack", "msgpack") from exc
    return msgpack


_MSGPACK_EXT: Final = {"datetime": 1, "date": 2, "time": 3, "uuid": 4, "decimal": 5, "set": 6}


def _msgpack_dumps(obj: Any) -> bytes:
    msgpack = _msgpack()

    def default(value: Any) -> Any:
        tagged = _json_default(value)
        if tagged[_TAG] == "bytes":  # msgpack carries bytes natively; only memoryview lands here
            return bytes(value)
        payload = tagged["value"]
        data = packb(payload) if tagged[_TAG] == "set" else str(payload).encode("utf-8")
        return msgpack.ExtType(_MSGPACK_EXT[tagged[_TAG]], data)

    def packb(value: Any) -> bytes:
        return bytes(msgpack.packb(value, default=default, use_bin_type=True))

    try:
        return packb(obj)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"cannot encode as msgpack: {exc}") from exc


def _msgpack_loads(data: bytes) -> Any:
    msgpack = _msgpack()
    names = {code: name for name, code in _MSGPACK_EXT.items()}

    def ext_hook(code: int, payload: bytes) -> Any:
        name = names.get(code)
        if name is None:
            return msgpack.ExtType(code, payload)
        if name == "set":
            return set(unpackb(payload))
        return _DECODERS[name](payload.decode("utf-8"))

    def unpackb(value: bytes) -> Any:
        return msgpack.unpackb(value, ext_hook=ext_hook, raw=False, strict_map_key=False)

    try:
        return unpackb(data)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SerializationError(f"cannot decode msgpack: {exc}") from exc


def _pickle_dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise SerializationError(f"cannot pickle: {exc}") from exc


def _pickle_loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)  # noqa: S301 - only reached when the app accepts pickle
    except Exception as exc:  # unpickling can raise nearly anything
        raise SerializationError(f"cannot unpickle: {exc}") from exc


_BUILTIN: Final = (
    Serializer("json", "application/json", json_dumps, json_loads, binary=False),
    Serializer("msgpack", "application/x-msgpack", _msgpack_dumps, _msgpack_loads, binary=True),
    Serializer("pickle", "application/x-python-serialize", _pickle_dumps, _pickle_loads, binary=True),
)

#: Short name -> content type of the built-in serializers.
CONTENT_TYPES: Final = {s.name: s.content_type for s in _BUILTIN}


class Serializers:
    """The serializers one app may use, and which content types it accepts on input.

    Encoding with a serializer that is not accepted is allowed (another app may accept it);
    decoding a content type that is not accepted raises :class:`SerializationError`, which
    is what keeps pickle out unless asked for.
    """

    def __init__(self, accept: Iterable[str] = ("json",)) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[str, Serializer] = {}
        for serializer in _BUILTIN:
            self.register(serializer)
        self._accept: frozenset[str] = frozenset()
        self.accept(accept)
        #: Opens encrypted arguments and results, and seals them when asked (set by the app).
        self.cipher: Cipher | None = None

    def register(self, serializer: Serializer) -> None:
        """Add (or replace) a serializer, known by its name and content type."""
        self._by_name[serializer.name] = serializer
        self._by_type[serializer.content_type] = serializer

    def accept(self, names_or_types: Iterable[str]) -> None:
        """Set the accepted input content types (names like ``"json"`` or full content types)."""
        accepted = set()
        for item in names_or_types:
            accepted.add(self.get(item).content_type)
        self._accept = frozenset(accepted)

    @property
    def accepted(self) -> frozenset[str]:
        """The content types this app decodes."""
        return self._accept

    def get(self, name_or_type: str) -> Serializer:
        """Look a serializer up by short name or content type."""
        serializer = self._by_name.get(name_or_type) or self._by_type.get(name_or_type)
        if serializer is None:
            known = ", ".join(sorted(self._by_name))
            raise SerializationError(f"unknown serializer {name_or_type!r}; known: {known}")
        return serializer

    def dumps(self, obj: Any, name_or_type: str = "json") -> tuple[str, bytes]:
        """Encode ``obj``; return ``(content_type, data)``."""
        serializer = self.get(name_or_type)
        return serializer.content_type, serializer.dumps(obj)

    def loads(self, data: bytes, content_type: str) -> Any:
        """Decode ``data`` of ``content_type``, refusing content types the app does not accept."""
        serializer = self.get(content_type)
        if serializer.content_type not in self._accept:
            raise SerializationError(
                f"content type {serializer.content_type!r} is not accepted; "
                f"accepted: {', '.join(sorted(self._accept))} (see the accept_content setting)"
            )
        return serializer.loads(data)
