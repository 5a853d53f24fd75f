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

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import (
    Option,
    boolean,
    integer,
    items,
    number,
    option_error,
    optional,
    parse_options,
    seconds,
    text,
)
from asyncq._utils import redact_url
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


_WHAT: Final = "sqs broker"


def _steps(value: object) -> tuple[int, ...]:
    steps = tuple(sorted(set(items(integer(0, 9))(value))))
    if not steps:
        raise ValueError("a comma-separated list of priorities from 0 to 9")
    return steps


def _group(value: object) -> str | GroupKey:
    if callable(value) or value in {"queue", "id"}:
        return value
    raise ValueError("'queue', 'id', or a callable(message) -> str")


REGION: Final = Option("region", optional(text), None)
ENDPOINT_URL: Final = Option("endpoint_url", optional(text), None)
TLS: Final = Option("tls", boolean, True)
ACCESS_KEY: Final = Option("aws_access_key_id", optional(text), None)
SECRET_KEY: Final = Option("aws_secret_access_key", optional(text), None)
SESSION_TOKEN: Final = Option("aws_session_token", optional(text), None)
QUEUE_PREFIX: Final = Option("queue_prefix", text, "")
FIFO: Final = Option("fifo", boolean, False)
MESSAGE_GROUP: Final[Option[str | GroupKey]] = Option("message_group", _group, "queue")
PRIORITY_STEPS: Final[Option[tuple[int, ...]]] = Option("priority_steps", _steps, (0,))
PRIORITY_WEIGHTS: Final = Option("priority_weights", optional(items(number(0.001, 1e6))), None)
VISIBILITY_TIMEOUT: Final = Option("visibility_timeout", number(1, MAX_VISIBILITY), 30.0)
WAIT_TIME: Final = Option("wait_time", integer(0, 20), 10)
MAX_MESSAGE_SIZE: Final = Option("max_message_size", integer(1024, 1_048_576), DEFAULT_MAX_MESSAGE_SIZE)
REQUEST_TIMEOUT: Final = Option("request_timeout", number(0.1, 3600), 30.0)
CONNECT_TIMEOUT: Final = Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT)
CREATE_QUEUES: Final = Option("create_queues", boolean, True)

SPECS: Final[tuple[Option[Any], ...]] = (
    REGION, ENDPOINT_URL, TLS, ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, QUEUE_PREFIX, FIFO,
    MESSAGE_GROUP, PRIORITY_STEPS, PRIORITY_WEIGHTS, VISIBILITY_TIMEOUT, WAIT_TIME,
    MAX_MESSAGE_SIZE, REQUEST_TIMEOUT, CONNECT_TIMEOUT, CREATE_QUEUES,
)  # fmt: skip


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
    given = parse_options(parts.query, options, SPECS, what=_WHAT)
    endpoint = given[ENDPOINT_URL]
    if endpoint is None and parts.hostname:
        scheme = "https" if given[TLS] else "http"
        endpoint = f"{scheme}://{parts.hostname}" + (f":{port}" if port else "")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise option_error(_WHAT, "endpoint_url", endpoint, "must start with http:// or https://")
    access = given[ACCESS_KEY] or (unquote(parts.username) if parts.username else None)
    secret = given[SECRET_KEY] or (unquote(parts.password) if parts.password else None)
    if (access is None) != (secret is None):
        raise ConfigurationError("sqs:// needs both an access key id and a secret access key, or neither")
    prefix = given[QUEUE_PREFIX]
    if prefix and not _NAME.fullmatch(prefix):
        raise option_error(_WHAT, "queue_prefix", prefix, "letters, digits, '-' and '_' only")
    steps = given[PRIORITY_STEPS]
    weights = given[PRIORITY_WEIGHTS] or (1.0,) * len(steps)
    if len(weights) != len(steps):
        shown = ",".join(f"{weight:g}" for weight in weights)
        problem = f"needs one weight per priority step ({len(steps)})"
        raise option_error(_WHAT, "priority_weights", shown, problem)
    return SQSSettings(
        region=given[REGION] or None,
        endpoint_url=endpoint,
        access_key=access,
        secret_key=secret,
        session_token=given[SESSION_TOKEN],
        queue_prefix=prefix,
        fifo=given[FIFO],
        message_group=given[MESSAGE_GROUP],
        priority_steps=steps,
        priority_weights=weights,
        # SQS counts visibility in whole seconds; rounding up never hands a message out early.
        visibility_timeout=math.ceil(given[VISIBILITY_TIMEOUT]),
        wait_time=given[WAIT_TIME],
        max_message_size=given[MAX_MESSAGE_SIZE],
        request_timeout=given[REQUEST_TIMEOUT],
        connect_timeout=given[CONNECT_TIMEOUT],
        create_queues=given[CREATE_QUEUES],
    )
