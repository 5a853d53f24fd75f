"""``sqs://`` URLs and options: where the service is, who signs, and how queues are laid out.

``sqs://[KEY:SECRET@][HOST[:PORT]]?option=value...``: the user info is the access key pair
(otherwise the usual AWS chain: environment, shared files, instance roles), the host an
endpoint (``https://HOST:PORT``, or ``http://`` with ``tls=false``; otherwise the region's
own endpoint). Keyword options win over the URL query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT, connect_timeout_value
from asyncq._utils import redact_url
from asyncq.brokers._options import boolean, merge_options, number
from asyncq.brokers.base import OutgoingMessage
from asyncq.exceptions import ConfigurationError

__all__ = ["MAX_DELAY", "MAX_VISIBILITY", "SQSSettings", "parse_sqs_url"]

#: SQS limits: DelaySeconds and a receive's visibility, in seconds.
MAX_DELAY: Final = 900
MAX_VISIBILITY: Final = 43_200
#: The classic SQS message size limit (body plus attributes).
DEFAULT_MAX_MESSAGE_SIZE: Final = 262_144
_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")

GroupKey = Callable[[OutgoingMessage], str]


@dataclass(frozen=True, slots=True)
class SQSSettings:
    """Every ``sqs://`` option, validated, defaults filled in."""

    region: str | None
    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    queue_prefix: str
    fifo: bool
    message_group: str | GroupKey
    priority_steps: tuple[int, ...]
    priority_weights: tuple[float, ...]
    visibility_timeout: int
    wait_time: int
    max_message_size: int
    request_timeout: float
    connect_timeout: float
    create_queues: bool

    def physical_name(self, queue: str, step: int = 0, *, dead: bool = False) -> str:
        """The SQS queue name of one priority band (or the dead letters) of ``queue``."""
        name = self.queue_prefix + queue
        if dead:
            name += "-dead"
        elif step != self.priority_steps[0]:
            name += f"-p{step}"
        if not _NAME.fullmatch(name) or len(name) > (75 if self.fifo else 80):
            raise ConfigurationError(
                f"queue {queue!r} gives the SQS queue name {name!r}: SQS allows letters, digits,"
                f" '-' and '_', at most 80 characters (75 for FIFO, which adds '.fifo')"
            )
        return name + ".fifo" if self.fifo else name

    def band(self, priority: int | None) -> int:
        """The priority step whose queue carries a message of ``priority``."""
        value = priority or 0
        return max((s for s in self.priority_steps if s <= value), default=self.priority_steps[0])


def _boolean(name: str, value: Any) -> bool:
    return boolean("sqs", name, value)


def _number(name: str, value: Any, low: float, high: float) -> float:
    return number("sqs", name, value, low, high)


def _steps(name: str, value: Any) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        steps = tuple(sorted({int(item) for item in items}))
    except (TypeError, ValueError):
        raise ConfigurationError(f"sqs:// option {name}={value!r} is not a list of priorities") from None
    if not steps or steps[0] < 0 or steps[-1] > 9:
        raise ConfigurationError(f"sqs:// option {name}={value!r}: priorities go from 0 to 9")
    return steps


def _weights(value: Any, count: int) -> tuple[float, ...]:
    if value is None:
        return (1.0,) * count
    items = value.split(",") if isinstance(value, str) else list(value)
    weights = tuple(_number("priority_weights", item, 0.001, 1e6) for item in items)
    if len(weights) != count:
        raise ConfigurationError(
            f"sqs:// option priority_weights={value!r} needs one weight per priority step ({count})"
        )
    return weights


_DEFAULTS: Final[dict[str, Any]] = {
    "region": None,
    "endpoint_url": None,
    "tls": True,
    "aws_access_key_id": None,
    "aws_secret_access_key": None,
    "aws_session_token": None,
    "queue_prefix": "",
    "fifo": False,
    "message_group": "queue",
    "priority_steps": "0",
    "priority_weights": None,
    "visibility_timeout": 30,
    "wait_time": 10,
    "max_message_size": DEFAULT_MAX_MESSAGE_SIZE,
    "request_timeout": 30.0,
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "create_queues": True,
}


def parse_sqs_url(url: str, options: Mapping[str, Any]) -> SQSSettings:
    """Validate an ``sqs://`` URL and its options into :class:`SQSSettings`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad sqs:// URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme.lower() != "sqs":
        raise ConfigurationError(f"{redact_url(url)!r} is not an sqs:// URL")
    if parts.path not in {"", "/"}:
        raise ConfigurationError(
            f"sqs:// URL {redact_url(url)!r} has a path; give the region as ?region=NAME"
        )
    merged = merge_options("sqs", url, options, _DEFAULTS)
    endpoint = merged["endpoint_url"]
    if endpoint is None and parts.hostname:
        scheme = "https" if _boolean("tls", merged["tls"]) else "http"
        endpoint = f"{scheme}://{parts.hostname}" + (f":{port}" if port else "")
    if endpoint is not None and not str(endpoint).startswith(("http://", "https://")):
        raise ConfigurationError(
            f"sqs:// option endpoint_url={endpoint!r} must start with http:// or https://"
        )
    access = merged["aws_access_key_id"] or (unquote(parts.username) if parts.username else None)
    secret = merged["aws_secret_access_key"] or (unquote(parts.password) if parts.password else None)
    if (access is None) != (secret is None):
        raise ConfigurationError("sqs:// needs both an access key id and a secret access key, or neither")
    group = merged["message_group"]
    if not callable(group) and group not in {"queue", "id"}:
        raise ConfigurationError(
            f"sqs:// option message_group={group!r}: 'queue', 'id', or a callable(message) -> str"
        )
    prefix = str(merged["queue_prefix"])
    if prefix and not _NAME.fullmatch(prefix):
        raise ConfigurationError(f"sqs:// option queue_prefix={prefix!r}: letters, digits, '-' and '_' only")
    steps = _steps("priority_steps", merged["priority_steps"])
    wait = _number("wait_time", merged["wait_time"], 0, 20)
    return SQSSettings(
        region=merged["region"] or None,
        endpoint_url=endpoint,
        access_key=access,
        secret_key=secret,
        session_token=merged["aws_session_token"],
        queue_prefix=prefix,
        fifo=_boolean("fifo", merged["fifo"]),
        message_group=group,
        priority_steps=steps,
        priority_weights=_weights(merged["priority_weights"], len(steps)),
        # SQS counts visibility in whole seconds; rounding up never hands a message out early.
        visibility_timeout=math.ceil(
            _number("visibility_timeout", merged["visibility_timeout"], 1, MAX_VISIBILITY)
        ),
        wait_time=int(wait),
        max_message_size=int(_number("max_message_size", merged["max_message_size"], 1024, 1_048_576)),
        request_timeout=_number("request_timeout", merged["request_timeout"], 0.1, 3600),
        connect_timeout=connect_timeout_value(merged["connect_timeout"]),
        create_queues=_boolean("create_queues", merged["create_queues"]),
    )
