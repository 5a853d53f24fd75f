"""Content header frames decoded by hand: the properties a delivery needs, headers table included.

pamqp decodes a header table by slicing the rest of the buffer for every value (quadratic in
the table's size) and builds a full ``Basic.Properties``: it was the largest single cost of
a delivery. :func:`decode_header` reads the property list in place and decodes the common
table value types itself; rarer ones (floats, decimals, timestamps) go to pamqp's decoder
for that value only, so the values are the ones pamqp would give.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pamqp import decode as pamqp_decode

__all__ = ["ContentHead", "decode_header"]

_START: Final = struct.Struct(">HHQH")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_FIXED: Final = {
    0x62: struct.Struct(">b"),  # b
    0x42: struct.Struct(">B"),  # B
    0x73: struct.Struct(">h"),  # s
    0x75: struct.Struct(">H"),  # u
    0x49: struct.Struct(">i"),  # I
    0x69: struct.Struct(">I"),  # i
    0x6C: struct.Struct(">q"),  # l
    0x4C: struct.Struct(">q"),  # L, read as signed as pamqp does
}

# Property flags in wire order: (flag, kind) with kind s = short string, t = table,
# o = octet, q = 64-bit timestamp.
_PROPERTIES: Final = (
    (0x8000, "content_type", "s"),
    (0x4000, "content_encoding", "s"),
    (0x2000, "headers", "t"),
    (0x1000, "delivery_mode", "o"),
    (0x0800, "priority", "o"),
    (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"),
    (0x0100, "expiration", "s"),
    (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "q"),
    (0x0020, "message_type", "s"),
    (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"),
    (0x0004, "cluster_id", "s"),
)


class ContentHead:
    """A decoded content header: the body's size and the properties asyncq reads."""

    __slots__ = ("body_size", "headers", "message_id", "priority")

    def __init__(
        self, body_size: int, headers: dict[str, Any] | None, message_id: str | None, priority: int | None
    ) -> None:
        self.body_size = body_size
        self.headers = headers
        self.message_id = message_id
        self.priority = priority


def _text(data: bytes) -> str | bytes:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data  # as pamqp: bytes that are not UTF-8 stay bytes


def _value(buffer: bytes, offset: int) -> tuple[Any, int]:
    """One table value at ``offset`` (its type byte): (value, offset after it)."""
    kind = buffer[offset]
    offset += 1
    if kind == 0x53:  # S
        (size,) = _U32.unpack_from(buffer, offset)
        offset += 4
        return _text(buffer[offset : offset + size]), offset + size
    if kind == 0x74:  # t
        return buffer[offset] != 0, offset + 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed.unpack_from(buffer, offset)[0], offset + fixed.size
    if kind == 0x56 or kind == 0:  # V, and NUL as pamqp reads it
        return None, offset
    if kind == 0x41:  # A
        (size,) = _U32.unpack_from(buffer, offset)
        offset += 4
        end = offset + size
        items = []
        while offset < end:
            item, offset = _value(buffer, offset)
            items.append(item)
        return items, end
    if kind == 0x46:  # F
        return _table(buffer, offset)
    decoder = pamqp_decode.TABLE_MAPPING.get(bytes((kind,)))
    if decoder is None:
        raise ValueError(f"unknown AMQP field type {bytes((kind,))!r}")
    consumed, value = decoder(buffer[offset:])
    return value, offset + consumed


def _table(buffer: bytes, offset: int) -> tuple[dict[str, Any], int]:
    (size,) = _U32.unpack_from(buffer, offset)
    offset += 4
    end = offset + size
    if end > len(buffer):
        raise ValueError("field table length exceeds the frame")
    table: dict[str, Any] = {}
    while offset < end:
        key_size = buffer[offset]
        key = buffer[offset + 1 : offset + 1 + key_size].decode()
        table[key], offset = _value(buffer, offset + 1 + key_size)
    return table, end


def decode_header(payload: bytes) -> ContentHead:
    """Decode a content header frame's payload (the bytes between the frame head and end)."""
    _, _, body_size, flags = _START.unpack_from(payload, 0)
    offset = _START.size
    last = flags
    while last & 1:  # more flag words follow (no Basic property uses them): skipped
        (last,) = _U16.unpack_from(payload, offset)
        offset += 2
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    priority: int | None = None
    for flag, name, kind in _PROPERTIES:
        if not flags & flag:
            continue
        if kind == "s":
            size = payload[offset]
            if name == "message_id":
                message_id = payload[offset + 1 : offset + 1 + size].decode(errors="replace")
            offset += 1 + size
        elif kind == "t":
            headers, offset = _table(payload, offset)
        elif kind == "o":
            if name == "priority":
                priority = payload[offset]
            offset += 1
        else:
            offset += 8
    return ContentHead(body_size, headers, message_id, priority)
