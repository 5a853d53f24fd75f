"""What the RabbitMQ broker writes on the wire: options, headers, delay levels and routes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pamqp.commands import Basic

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import Option, boolean, choice, integer, seconds, text

__all__ = [
    "BROKER_OPTIONS",
    "DELAY_LEVELS_MS",
    "MAX_PRIORITY",
    "PUBLISH_WINDOW",
    "Route",
    "carried_headers",
    "int_header",
    "level_name",
    "pick_level",
]


def _accepted(value: object) -> object:
    return value


EXCHANGE: Final = Option("exchange", text, "asyncq")
EXCHANGE_TYPE: Final = Option("exchange_type", choice("direct", "topic"), "direct")
QUEUE_TYPE: Final = Option("queue_type", choice("classic", "quorum"), "classic")
MAX_DELIVERIES: Final = Option("max_deliveries", integer(1), 200)
PUBLISH_TIMEOUT: Final = Option("publish_timeout", seconds, 30.0)
CONNECT_TIMEOUT: Final = Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT)
CONNECTION_NAME: Final = Option("connection_name", text, "asyncq")
#: False: first publishes are not confirmed (faster; lost if the connection drops meanwhile).
CONFIRM_PUBLISH: Final = Option("confirm_publish", boolean, True)
#: The client of the consumers' data path: aio-pika, or asyncq's own lean AMQP connection.
CLIENT: Final = Option("client", choice("aio-pika", "lean"), "lean")
#: Accepted and ignored: an AMQP delivery is held for as long as its channel lives.
VISIBILITY_TIMEOUT: Final = Option("visibility_timeout", _accepted, None)

#: Options of this driver (URL query or keyword), with their defaults.
BROKER_OPTIONS: Final = (
    EXCHANGE,
    EXCHANGE_TYPE,
    QUEUE_TYPE,
    MAX_DELIVERIES,
    PUBLISH_TIMEOUT,
    CONNECT_TIMEOUT,
    CONNECTION_NAME,
    CONFIRM_PUBLISH,
    CLIENT,
    VISIBILITY_TIMEOUT,
)

#: Delay queue TTLs: 250 ms x 4**k. Nine queues cover 16384 s (4.5 h) per hop; longer delays
#: hop through the top queue again. Powers of four keep the queue count small while a delay
#: needs at most three hops per level (a one-hour countdown takes six).
DELAY_LEVELS_MS: Final = tuple(250 * 4**k for k in range(9))

#: The highest AMQP priority on classic queues. User priorities are 0-9; 10 is kept for hops,
#: so a message moving between delay queues passes the backlog of its work queue.
MAX_PRIORITY: Final = 10
HOP_PRIORITY: Final = MAX_PRIORITY

#: How many publishes ``publish_many`` keeps awaiting confirms at once.
PUBLISH_WINDOW: Final = 2000

#: Dead letters one ``requeue_dead_letters`` round fetches, publishes and acks together.
REQUEUE_WINDOW: Final = 200

#: Seconds before a message whose hop or redelivery bookkeeping failed is requeued.
BOOKKEEPING_RETRY_DELAY: Final = 1.0

# Headers asyncq writes. Times are integer milliseconds: AMQP field tables (as pamqp encodes
# Python floats) carry 32-bit floats, which would round an epoch to about two minutes.
H_ETA: Final = "x-asyncq-eta-ms"
H_DELIVERIES: Final = "x-asyncq-deliveries"  # deliveries before this copy was published
H_RETURNS: Final = "x-asyncq-returns"  # deliveries in a row whose consumer was lost (classic)
H_PRIORITY: Final = "x-asyncq-priority"  # the caller's priority while a hop uses HOP_PRIORITY
H_QUEUE: Final = "x-asyncq-queue"
H_REASON: Final = "x-asyncq-reason"
H_DEAD_AT: Final = "x-asyncq-dead-at-ms"
H_COPY: Final = "x-asyncq-copy"  # a fresh id on every re-publish: names the incarnation (CopyGuard)

# Headers RabbitMQ adds when it dead-letters or redelivers; dropped when asyncq re-publishes
# so that a message hopping through delay queues for weeks does not grow without bound.
SERVER_HEADERS: Final = frozenset(
    {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "x-delivery-count"}
)
SERVER_HEADER_PREFIXES: Final = ("x-last-death-",)

QUEUE_SUFFIX_ROOM: Final = len(".delay.16384s")


def int_header(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def carried_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in headers.items()
        if key not in SERVER_HEADERS and not key.startswith(SERVER_HEADER_PREFIXES)
    }


def level_name(queue: str, level_ms: int) -> str:
    label = f"{level_ms}ms" if level_ms < 1000 else f"{level_ms // 1000}s"
    return f"{queue}.delay.{label}"


def pick_level(remaining_ms: int) -> tuple[int, bool]:
    """The delay queue for ``remaining_ms`` and whether it is the last hop.

    The longest level not longer than the time left, so a hop never overshoots; below the
    shortest level, the shortest one (the only place a message waits past its eta).
    """
    for level in reversed(DELAY_LEVELS_MS):
        if level <= remaining_ms:
            return level, level == remaining_ms
    return DELAY_LEVELS_MS[0], True


@dataclass(frozen=True, slots=True)
class Route:
    """Where and how to publish one message."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    queue: str  # the work queue it belongs to, to re-declare on an unroutable return
    is_delayed: bool  # goes to a delay queue of ``queue``
