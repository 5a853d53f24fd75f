"""How an asyncq message is laid out in an SQS message, and read back.

The envelope goes in the message body when it is text SQS accepts (a JSON envelope is);
other bytes go in a Binary attribute, so no base64 eats into the size limit. Attributes carry
what SQS does not keep itself: the task id, priority, eta (for delays past 15 minutes), the
deliveries made before a re-send, and a dead letter's reason and time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final

from asyncq.exceptions import MessageTooLargeError

__all__ = [
    "A_BODY",
    "A_COUNT",
    "A_DEAD_AT",
    "A_ETA",
    "A_ID",
    "A_PRIORITY",
    "A_REASON",
    "Received",
    "decode",
    "encode",
]

A_ID: Final = "asyncq-id"
A_BODY: Final = "asyncq-body"
A_PRIORITY: Final = "asyncq-priority"
A_ETA: Final = "asyncq-eta"
A_COUNT: Final = "asyncq-count"  # deliveries made before this copy was sent
A_REASON: Final = "asyncq-reason"
A_DEAD_AT: Final = "asyncq-dead-at"
_BINARY_MARK: Final = "-"  # the body of a message whose bytes travel in A_BODY

# The characters SQS accepts in a message body (XML 1.0's).
_TEXT = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


@dataclass(slots=True)
class Received:
    """One received SQS message, decoded."""

    id: str
    body: bytes
    priority: int
    eta: float | None
    count: int  # deliveries so far, this one included
    prior: int  # deliveries made before this copy was sent (A_COUNT)
    receipt: str
    url: str
    reason: str | None
    dead_at: float | None


def _attribute(value: str | bytes | float) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"DataType": "Binary", "BinaryValue": value}
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    return {"DataType": "Number", "StringValue": repr(value)}


def _size(body: str, attributes: dict[str, dict[str, Any]]) -> int:
    """The size SQS counts: the body and each attribute's name, type and value."""
    total = len(body.encode())
    for name, attribute in attributes.items():
        value = attribute.get("BinaryValue") or attribute.get("StringValue", "").encode()
        total += len(name.encode()) + len(attribute["DataType"]) + len(value)
    return total


def encode(
    message_id: str,
    body: bytes,
    *,
    queue: str,
    max_size: int,
    priority: int = 0,
    eta: float | None = None,
    prior: int = 0,
    reason: str | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The body and message attributes of one SQS message, or MessageTooLargeError."""
    attributes: dict[str, dict[str, Any]] = {A_ID: _attribute(message_id)}
    text: str | None
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or not text or text == _BINARY_MARK or not _TEXT.fullmatch(text):
        text = _BINARY_MARK
        attributes[A_BODY] = _attribute(body)
    if priority:
        attributes[A_PRIORITY] = _attribute(priority)
    if eta is not None:
        attributes[A_ETA] = _attribute(round(eta, 6))
    if prior:
        attributes[A_COUNT] = _attribute(prior)
    if reason is not None:
        attributes[A_REASON] = _attribute(reason or "-")
        attributes[A_DEAD_AT] = _attribute(round(time.time(), 6))
    size = _size(text, attributes)
    if size > max_size:
        raise MessageTooLargeError(
            f"message {message_id} for queue {queue!r} is {size} bytes as an SQS message;"
            f" SQS takes at most {max_size} (max_message_size): send a reference to the data instead"
        )
    return text, attributes


def decode(raw: dict[str, Any], url: str) -> Received:
    """A received SQS message (with its attributes) as :class:`Received`."""
    attributes = raw.get("MessageAttributes") or {}

    def value(name: str) -> str | None:
        found = attributes.get(name)
        return None if found is None else str(found.get("StringValue"))

    binary = attributes.get(A_BODY)
    body = binary["BinaryValue"] if binary is not None else str(raw["Body"]).encode()
    prior = int(value(A_COUNT) or 0)
    eta, dead_at = value(A_ETA), value(A_DEAD_AT)
    return Received(
        id=value(A_ID) or str(raw["MessageId"]),  # a message sent by another tool: its SQS id
        body=body,
        priority=int(value(A_PRIORITY) or 0),
        eta=None if eta is None else float(eta),
        count=prior + int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
        prior=prior,
        receipt=str(raw["ReceiptHandle"]),
        url=url,
        reason=value(A_REASON),
        dead_at=None if dead_at is None else float(dead_at),
    )
