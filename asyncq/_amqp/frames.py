"""AMQP 0-9-1 frames read from a byte buffer, and the hot frames built by hand.

:class:`FrameReader` takes the bytes a socket delivered (in any split) and returns the
complete frames in them. Body frames and ``Basic.Deliver`` (every message has both) are
decoded here; everything else goes through pamqp's generic codec.
"""

from __future__ import annotations

import struct
from typing import Final

from pamqp import frame as pamqp_frame
from pamqp.base import Frame
from pamqp.heartbeat import Heartbeat

from asyncq._amqp.header import ContentHead, decode_header

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_METHOD",
    "Deliver",
    "FrameError",
    "FrameReader",
    "ParsedFrame",
    "ServerAck",
    "ack_frame",
    "marshal",
]

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE

_HEAD: Final = struct.Struct(">BHI")
_METHOD_ID: Final = struct.Struct(">HH")
_U64: Final = struct.Struct(">Q")
#: Basic.Ack: class 60, method 80, delivery-tag u64, multiple bit.
_ACK: Final = struct.Struct(">BHIHHQBB")

_DELIVER_ID: Final = (60, 60)
_ACK_ID: Final = (60, 80)
_NACK_ID: Final = (60, 120)


class Deliver:
    """A decoded ``Basic.Deliver`` (what a delivery needs of it)."""

    __slots__ = ("consumer_tag", "delivery_tag", "exchange", "redelivered", "routing_key")

    def __init__(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
    ) -> None:
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key


class ServerAck:
    """A publisher confirm: the server's ``Basic.Ack`` or ``Basic.Nack`` of published messages."""

    __slots__ = ("delivery_tag", "multiple", "nack")

    def __init__(self, delivery_tag: int, multiple: bool, nack: bool) -> None:
        self.delivery_tag = delivery_tag
        self.multiple = multiple
        self.nack = nack


#: (channel, value): value is a pamqp frame, a :class:`Deliver`, or bytes for a body frame.
ParsedFrame = tuple[int, "Frame | ContentHead | Heartbeat | Deliver | ServerAck | bytes"]


class FrameError(ValueError):
    """The peer sent something that is not an AMQP frame."""


def _decode_deliver(payload: memoryview) -> Deliver:
    offset = 4
    size = payload[offset]
    consumer_tag = bytes(payload[offset + 1 : offset + 1 + size]).decode()
    offset += 1 + size
    (delivery_tag,) = _U64.unpack_from(payload, offset)
    redelivered = bool(payload[offset + 8] & 1)
    offset += 9
    size = payload[offset]
    exchange = bytes(payload[offset + 1 : offset + 1 + size]).decode()
    offset += 1 + size
    size = payload[offset]
    routing_key = bytes(payload[offset + 1 : offset + 1 + size]).decode()
    return Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)


_FAST: Final = frozenset((_DELIVER_ID, _ACK_ID, _NACK_ID))


class FrameReader:
    """Complete frames out of a stream of bytes split anywhere."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ParsedFrame]:
        """Add ``data``; return the frames now complete, in order (the rest waits for more)."""
        buffer = self._buffer
        buffer += data
        frames: list[ParsedFrame] = []
        length = len(buffer)
        start = 0
        view = memoryview(buffer)
        try:
            while length - start >= 8:
                kind, channel, size = _HEAD.unpack_from(buffer, start)
                end = start + 7 + size
                if end >= length:
                    break
                if buffer[end] != FRAME_END:
                    raise FrameError(f"frame of type {kind} does not end with 0xCE")
                if kind == FRAME_BODY:
                    frames.append((channel, bytes(view[start + 7 : end])))
                elif kind == FRAME_METHOD and (ids := _METHOD_ID.unpack_from(buffer, start + 7)) in _FAST:
                    if ids == _DELIVER_ID:
                        frames.append((channel, _decode_deliver(view[start + 7 : end])))
                    else:
                        (tag,) = _U64.unpack_from(buffer, start + 11)
                        bits = buffer[start + 19]
                        frames.append((channel, ServerAck(tag, bool(bits & 1), ids == _NACK_ID)))
                elif kind == FRAME_HEADER:
                    frames.append((channel, decode_header(bytes(view[start + 7 : end]))))
                elif kind == FRAME_HEARTBEAT:
                    frames.append((channel, Heartbeat()))
                else:
                    _, _, value = pamqp_frame.unmarshal(bytes(view[start : end + 1]))
                    frames.append((channel, value))  # type: ignore[arg-type]
                start = end + 1
        finally:
            view.release()
        if start:
            del buffer[:start]
        return frames


def marshal(value: Frame | Heartbeat, channel: int) -> bytes:
    """One frame's bytes (pamqp's codec)."""
    return pamqp_frame.marshal(value, channel)


def ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """A ``Basic.Ack`` frame, built without pamqp (one per flush of a consumer's acks)."""
    return _ACK.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0, FRAME_END)
