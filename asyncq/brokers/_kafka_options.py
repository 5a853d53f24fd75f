"""``kafka://`` URLs and options: bootstrap servers, consumer group and topic layout.

``kafka://HOST[:PORT][,HOST[:PORT]...]?option=value...``; keyword options win over the query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import Option, integer, number, parse_options, seconds, text
from asyncq._utils import redact_url
from asyncq.brokers.base import OutgoingMessage
from asyncq.exceptions import ConfigurationError

__all__ = ["KafkaSettings", "parse_kafka_url"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,240}")

PartitionKey = Callable[[OutgoingMessage], str]

_WHAT: Final = "kafka broker"


def _partition_key(value: object) -> str | PartitionKey:
    if callable(value) or value in {"id", "queue"}:
        return value
    raise ValueError("'id', 'queue', or a callable(message) -> str")


def _group_id(value: object) -> str:
    if not text(value):
        raise ValueError("a non-empty string")
    return str(value)


GROUP_ID: Final = Option("group_id", _group_id, "asyncq")
TOPIC_PREFIX: Final = Option("topic_prefix", text, "")
PARTITIONS: Final = Option("partitions", integer(1, 10_000), 6)
REPLICATION_FACTOR: Final = Option("replication_factor", integer(1, 100), 1)
PARTITION_KEY: Final[Option[str | PartitionKey]] = Option("partition_key", _partition_key, "id")
COMMIT_INTERVAL: Final = Option("commit_interval", number(0.01, 60), 0.2)
SESSION_TIMEOUT: Final = Option("session_timeout", number(1, 3600), 10.0)
MAX_MESSAGE_SIZE: Final = Option("max_message_size", integer(1024, 100 * 1_048_576), 1_048_576)
REQUEST_TIMEOUT: Final = Option("request_timeout", number(0.1, 3600), 30.0)
CONNECT_TIMEOUT: Final = Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT)

SPECS: Final[tuple[Option[Any], ...]] = (
    GROUP_ID, TOPIC_PREFIX, PARTITIONS, REPLICATION_FACTOR, PARTITION_KEY, COMMIT_INTERVAL,
    SESSION_TIMEOUT, MAX_MESSAGE_SIZE, REQUEST_TIMEOUT, CONNECT_TIMEOUT,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Every ``kafka://`` option, validated, defaults filled in."""

    bootstrap: list[str]
    group_id: str
    topic_prefix: str
    partitions: int
    replication_factor: int
    partition_key: str | PartitionKey
    commit_interval: float
    session_timeout: float
    max_message_size: int
    request_timeout: float
    connect_timeout: float

    def topic(self, queue: str, suffix: str = "") -> str:
        """The topic of ``queue`` (``suffix``: ".delay" or ".dead")."""
        name = f"{self.topic_prefix}{queue}{suffix}"
        if not _TOPIC.fullmatch(name) or name in {".", ".."}:
            raise ConfigurationError(
                f"queue {queue!r} gives the Kafka topic {name!r}: topics take letters, digits,"
                " '.', '_' and '-', at most 240 characters"
            )
        return name

    def key(self, message: OutgoingMessage) -> bytes:
        """The record key (which decides the partition) of ``message``."""
        rule = self.partition_key
        key = message.id if rule == "id" else message.queue if rule == "queue" else str(rule(message))  # type: ignore[operator]
        return key.encode()


def parse_kafka_url(url: str, options: Mapping[str, Any]) -> KafkaSettings:
    """Validate a ``kafka://`` URL and its options into :class:`KafkaSettings`."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka":
        raise ConfigurationError(f"{redact_url(url)!r} is not a kafka:// URL")
    hosts = [h for h in parts.netloc.rpartition("@")[2].split(",") if h]
    if not hosts:
        raise ConfigurationError(
            f"kafka:// URL {redact_url(url)!r} names no broker; e.g. kafka://localhost:9092"
        )
    bootstrap = []
    for host in hosts:
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "9092")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"kafka:// URL {redact_url(url)!r}: {host!r} is not HOST:PORT")
        bootstrap.append(f"{name}:{port}")
    if parts.path not in {"", "/"}:
        raise ConfigurationError(f"kafka:// URL {redact_url(url)!r} has a path; options go in the query")
    given = parse_options(parts.query, options, SPECS, what=_WHAT)
    return KafkaSettings(
        bootstrap=bootstrap,
        group_id=given[GROUP_ID],
        topic_prefix=given[TOPIC_PREFIX],
        partitions=given[PARTITIONS],
        replication_factor=given[REPLICATION_FACTOR],
        partition_key=given[PARTITION_KEY],
        commit_interval=given[COMMIT_INTERVAL],
        session_timeout=given[SESSION_TIMEOUT],
        max_message_size=given[MAX_MESSAGE_SIZE],
        request_timeout=given[REQUEST_TIMEOUT],
        connect_timeout=given[CONNECT_TIMEOUT],
    )
