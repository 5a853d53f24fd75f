"""amqp(s):// URLs: asyncq's options out, the client library's options (and defaults) in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asyncq._options import Option, Settings, parse_options
from asyncq._utils import redact_url
from asyncq.exceptions import ConfigurationError

__all__ = ["CLIENT_OPTIONS", "DEFAULT_RECONNECT_INTERVAL", "client_url", "split_amqp_url"]

#: Query parameters understood by aio-pika / aiormq themselves; passed through untouched.
CLIENT_OPTIONS: Final = frozenset(
    {
        "heartbeat",
        "timeout",
        "name",
        "auth",
        "cafile",
        "capath",
        "cadata",
        "keyfile",
        "certfile",
        "no_verify_ssl",
        "reconnect_interval",
        "fail_fast",
    }
)

#: Seconds between reconnection attempts unless the URL sets ``reconnect_interval``: aio-pika
#: waits 5 s, which keeps a worker (and a producer's rpc:// backend) away long after the
#: server is back.
DEFAULT_RECONNECT_INTERVAL: Final = 1.0


def split_amqp_url(
    url: str, options: Mapping[str, Any], specs: Iterable[Option[Any]], *, what: str
) -> tuple[str, Settings]:
    """Split ``url`` and keyword ``options`` into the client's URL and asyncq's own settings.

    Keyword options win over URL query parameters. Client-library parameters (heartbeat, TLS
    files, ...) stay in the returned URL, with ``reconnect_interval`` defaulted; anything
    neither side knows is refused.

    Raises:
        ConfigurationError: not an amqp(s) URL, an unknown option or a bad value.
    """
    parts = _amqp_parts(url)
    settings = parse_options(parts.query, options, specs, what=what, passthrough=CLIENT_OPTIONS)
    return _client_url(parts._replace(query=""), settings.passthrough), settings


def client_url(url: str) -> str:
    """``url`` with only the client library's options kept (asyncq's are another driver's business)."""
    parts = _amqp_parts(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    client = {key: value for key, value in pairs if key in CLIENT_OPTIONS}
    return _client_url(parts._replace(query=""), client)


def _amqp_parts(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"{redact_url(url)!r} is not an amqp:// or amqps:// URL")
    return parts


def _client_url(parts: Any, client: Mapping[str, str]) -> str:
    query = dict(client)
    query.setdefault("reconnect_interval", str(DEFAULT_RECONNECT_INTERVAL))
    return str(urlunsplit(parts._replace(query=urlencode(query))))
