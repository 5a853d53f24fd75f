"""``kafka://`` URLs and options: bootstrap servers, consumer group and topic layout.

``kafka://HOST[:PORT][,HOST[:PORT]...]?option=value...``; keyword options win over the query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT, connect_timeout_value
from asyncq._utils import redact_url
from asyncq.brokers._options import merge_options, number
from asyncq.brokers.base import OutgoingMessage
from asyncq.exceptions import ConfigurationError

__all__ = ["KafkaSettings", "parse_kafka_url"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,240}")

PartitionKey = Callable[[OutgoingMessage], str]

_DEFAULTS: Final[dict[str, Any]] = {
    "group_id": "asyncq",
    "topic_prefix": "",
    "partitions": 6,
    "replication_factor": 1,
    "partition_key": "id",
    "commit_interval": 0.2,
    "session_timeout": 10.0,
    "max_message_size": 1_048_576,
    "request_timeout": 30.0,
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
}


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
    merged = merge_options("kafka", url, options, _DEFAULTS)
    rule = merged["partition_key"]
    if not callable(rule) and rule not in {"id", "queue"}:
        raise ConfigurationError(
            f"kafka:// option partition_key={rule!r}: 'id', 'queue', or a callable(message) -> str"
        )
    group = str(merged["group_id"])
    if not group:
        raise ConfigurationError("kafka:// option group_id must not be empty")

    def num(name: str, low: float, high: float) -> float:
        return number("kafka", name, merged[name], low, high)

    return KafkaSettings(
        bootstrap=bootstrap,
        group_id=group,
        topic_prefix=str(merged["topic_prefix"]),
        partitions=int(num("partitions", 1, 10_000)),
        replication_factor=int(num("replication_factor", 1, 100)),
        partition_key=rule,
        commit_interval=num("commit_interval", 0.01, 60),
        session_timeout=num("session_timeout", 1, 3600),
        max_message_size=int(num("max_message_size", 1024, 100 * 1_048_576)),
        request_timeout=num("request_timeout", 0.1, 3600),
        connect_timeout=connect_timeout_value(merged["connect_timeout"]),
    )
