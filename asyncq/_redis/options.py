"""Redis URLs and options: where a URL points, and which options go to the driver or the connection.

A URL is one server (``redis://``, ``rediss://``), a Cluster (``redis+cluster://``,
``rediss+cluster://`` or ``?cluster=true``) or a Sentinel-managed master
(``redis+sentinel://``). Its query and the keyword options are split into the driver's own
settings and connection options; unknown names are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import Converter, boolean, convert, integer, number
from asyncq._options import Option as GenericOption
from asyncq._options import parse_options as parse_generic
from asyncq._utils import redact_url
from asyncq.exceptions import ConfigurationError

__all__ = [
    "CONNECTION_DEFAULTS",
    "CONNECTION_OPTIONS",
    "DRIVER_OPTION_NAMES",
    "Option",
    "Target",
    "parse_options",
    "plain_prefix",
]

#: Connection options, with the type a URL query string becomes. Most go to redis-py as they
#: are; ``cluster``, ``pool_timeout``, ``min_replicas``, ``replica_timeout`` and the
#: ``sentinel_*`` ones are read by :class:`Client`.
CONNECTION_OPTIONS: Final[dict[str, type]] = {
    "db": int,
    "username": str,
    "password": str,
    "client_name": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "connect_timeout": float,
    "socket_keepalive": bool,
    "health_check_interval": int,
    "max_connections": int,
    "pool_timeout": float,
    "cluster": bool,
    "multiplex": bool,
    "min_replicas": int,
    "replica_timeout": float,
    "sentinel_username": str,
    "sentinel_password": str,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_ca_data": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_check_hostname": bool,
}

#: Connection defaults: a dead server must surface as an error, never as a silent hang, and
#: a burst of callers waits for one of a bounded number of connections.
CONNECTION_DEFAULTS: Final[dict[str, Any]] = {
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "max_connections": 50,
    "pool_timeout": 5.0,
    "multiplex": True,
    "min_replicas": 0,
    "replica_timeout": 1.0,
}


@dataclass(frozen=True, slots=True)
class Option:
    """One driver option: its type (URL query strings are converted to it) and default."""

    kind: type
    default: Any
    doc: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: one server, a Cluster (startup nodes) or a Sentinel-managed master."""

    kind: Literal["server", "cluster", "sentinel"]
    url: str  # the URL without its query: shown in messages; redis-py parses it for one server
    nodes: tuple[tuple[str, int], ...] = ()  # Cluster startup nodes, or the sentinels
    service: str = ""  # the Sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def _boolean(value: object) -> bool:
    # An empty query value (``?ssl_check_hostname=``) means off, as it always has here.
    if isinstance(value, bool):
        return value
    text = str(value).strip()  # a keyword 1 or "On " counts, as it always has here
    return False if not text else boolean(text)


def _integer(value: object) -> int:
    # A keyword may be a whole float (``db=2.0``); bool is an int but never a count.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return integer()(value)


def _number(value: object) -> float:
    return number()(value)


def _string(value: object) -> str:
    return str(value)  # a keyword ``client_name=7`` has always been taken as "7"


#: How a URL query string becomes each option type of the tables.
_CONVERTERS: Final[dict[type, Converter[Any]]] = {bool: _boolean, int: _integer, float: _number, str: _string}


def _spec(name: str, kind: type, default: Any) -> GenericOption[Any]:
    return GenericOption(name, _CONVERTERS[kind], default)


_CONNECTION_SPECS: Final = tuple(_spec(name, kind, None) for name, kind in CONNECTION_OPTIONS.items())
_DB: Final = _spec("db", int, 0)


_SCHEMES: Final[dict[str, tuple[Literal["server", "cluster", "sentinel"], bool]]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
}


def _hosts(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``host[:port][,host[:port]...]`` (IPv6 hosts in brackets) -> ((host, port), ...)."""
    nodes = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"bad port {port_text!r} in Redis URL {redact_url(url)!r}") from None
        nodes.append((host or "127.0.0.1", port))
    if not nodes:
        raise ConfigurationError(f"Redis URL {redact_url(url)!r} names no host")
    return tuple(nodes)


def _target(url: str, cluster: bool) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise ConfigurationError(f"Redis URL {redact_url(url)!r} must start with one of {known}")
    kind, tls = _SCHEMES[scheme]
    clean = urlunsplit(parts._replace(query=""))
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    user, secret = unquote(username) or None, unquote(password) or None
    if kind == "server" and not cluster:
        return Target("server", clean, tls=tls)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if kind == "sentinel":
        if not segments or len(segments) > 2:
            raise ConfigurationError(
                f"Sentinel URL {redact_url(url)!r} must name the master: redis+sentinel://host:26379[,host:port]/"
                "<master name>[/<db>]"
            )
        db = convert(_DB, segments[1], "Redis URL") if len(segments) == 2 else 0
        nodes = _hosts(url, hosts, 26379)
        return Target("sentinel", clean, nodes, segments[0], db, user, secret)
    if len(segments) > 1 or (segments and segments[0] != "0"):
        raise ConfigurationError(f"Redis Cluster has only database 0; remove the path of {redact_url(url)!r}")
    return Target("cluster", clean, _hosts(url, hosts, 6379), username=user, password=secret, tls=tls)


#: The options of both Redis drivers (broker and result backend). One URL often serves both
#: (an App's result backend follows its broker URL), so a driver ignores the other's options
#: in the URL query; as keyword arguments they are still refused. A test keeps this in step.
DRIVER_OPTION_NAMES: Final = frozenset(
    {
        "key_prefix",
        "visibility_timeout",
        "poll_interval",
        "batch_size",
        "retry_timeout",
        "dead_letter_limit",
        "ping_interval",
    }
)


def parse_options(
    url: str, options: Mapping[str, Any], known: Mapping[str, Option], *, what: str
) -> tuple[Target, dict[str, Any], dict[str, Any]]:
    """Split a URL's query and keyword options into driver settings and connection options.

    Explicit keyword options win over the URL query. Returns where the URL points, the
    driver settings (every known option, defaults filled in) and the connection options.

    Raises:
        ConfigurationError: a bad URL, an unknown option name, or a value of the wrong type.
    """
    specs = [_spec(name, option.kind, option.default) for name, option in known.items()]
    specs += [spec for spec in _CONNECTION_SPECS if spec.name not in known]
    parsed = parse_generic(urlsplit(url).query, options, specs, what=what, shared=DRIVER_OPTION_NAMES)
    settings = {name: parsed[name] for name in known}
    connection = {
        spec.name: parsed[spec] for spec in _CONNECTION_SPECS if spec.name not in known and parsed.given(spec)
    }
    target = _target(url, bool(connection.get("cluster", False)))
    return target, settings, connection


def plain_prefix(prefix: str) -> str:
    """``prefix``, refused if it has braces (they would make it the Cluster hash tag of every key)."""
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"key_prefix {prefix!r} must not contain braces")
    return prefix
