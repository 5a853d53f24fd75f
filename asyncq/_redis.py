"""Plumbing shared by the Redis broker and result backend.

Owns what both drivers need and neither should repeat: splitting a ``redis://`` URL's query
into asyncq options and connection options (refusing unknown names), building the
connection pool (redis-py's own silent retries switched off: we retry where it is safe and
say so), loading Lua scripts by SHA with a fallback when Redis forgot them, and
translating redis-py exceptions into the asyncq error tree at the boundary.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from asyncq._utils import backoff_delay
from asyncq.exceptions import AsyncqError, ConfigurationError, MissingDependencyError

try:
    from redis.asyncio import Redis
    from redis.asyncio.connection import ConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise MissingDependencyError.for_extra("redis", "redis") from exc

__all__ = [
    "CLIENT_ERRORS",
    "CONNECTION_OPTIONS",
    "Option",
    "Script",
    "call_with_retry",
    "eval_script",
    "eval_scripts",
    "is_connection_error",
    "load_scripts",
    "make_client",
    "parse_options",
    "retry_pause",
    "translate_error",
]

T = TypeVar("T")

#: Connection options passed through to redis-py, with the type a URL query string becomes.
CONNECTION_OPTIONS: Final[dict[str, type]] = {
    "db": int,
    "username": str,
    "password": str,
    "client_name": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": bool,
    "health_check_interval": int,
    "max_connections": int,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_ca_data": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_check_hostname": bool,
}

#: Connection defaults: a dead server must surface as an error, never as a silent hang.
CONNECTION_DEFAULTS: Final[dict[str, Any]] = {
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "socket_keepalive": True,
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

#: Errors after which a command may not have reached Redis (or its reply may not have come back).
_CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

#: Everything a Redis call can raise (TimeoutError is an OSError); drivers catch this tuple,
#: so that they need not import redis themselves (that import must fail here, with the hint).
CLIENT_ERRORS: Final = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Option:
    """One driver option: its type (URL query strings are converted to it) and default."""

    kind: type
    default: Any
    doc: str


def _convert(name: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(text)
        if isinstance(value, bool):  # bool is an int: refuse visibility_timeout=True
            raise ValueError(value)
        if kind is float:
            return float(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"option {name}={value!r} is not a valid {kind.__name__}") from None


def parse_options(
    url: str, options: Mapping[str, Any], known: Mapping[str, Option], *, what: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Split a URL's query and keyword options into driver settings and connection options.

    Explicit keyword options win over the URL query. Returns the URL without its query,
    the driver settings (every known option, defaults filled in) and the redis-py
    connection keyword arguments.

    Raises:
        ConfigurationError: an unknown option name, or a value of the wrong type.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"{what} URL {url!r} must start with redis:// or rediss://")
    merged: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged.update(options)
    settings = {name: option.default for name, option in known.items()}
    connection: dict[str, Any] = {}
    unknown = []
    for name, value in merged.items():
        if name in known:
            settings[name] = _convert(name, value, known[name].kind)
        elif name in CONNECTION_OPTIONS:
            connection[name] = _convert(name, value, CONNECTION_OPTIONS[name])
        else:
            unknown.append(name)
    if unknown:
        names = ", ".join(sorted([*known, *CONNECTION_OPTIONS]))
        raise ConfigurationError(f"unknown {what} option(s) {', '.join(sorted(unknown))}; known: {names}")
    return urlunsplit(parts._replace(query="")), settings, connection


def make_client(url: str, connection: Mapping[str, Any], *, client_name: str) -> tuple[Redis, float | None]:
    """Build (not connect) a client over its own pool; return it and the per-command timeout.

    redis-py's hidden retries are off, and the wire protocol is pinned to RESP2 (redis-py 8
    defaults to RESP3, where subscription replies become push frames it consumes itself):
    the replies the drivers parse by hand keep one shape on every Redis version.

    ``socket_timeout`` is not given to redis-py: its send path wraps writes in
    ``asyncio.wait_for``, which on Python 3.11 can swallow the caller's cancellation (a
    consumer that will not stop). Callers apply the returned timeout around each command
    with ``asyncio.timeout`` instead; redis-py answers that by dropping the connection, as it
    would on its own timeout.
    """
    kwargs: dict[str, Any] = {**CONNECTION_DEFAULTS, "client_name": client_name, **connection}
    command_timeout: float | None = kwargs.pop("socket_timeout") or None
    try:
        pool = ConnectionPool.from_url(
            url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=None,
            protocol=2,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid Redis URL or option for {url!r}: {exc}") from exc
    return Redis(connection_pool=pool), command_timeout


def is_connection_error(exc: BaseException) -> bool:
    """True for errors after which a retry on a fresh connection can succeed."""
    return isinstance(exc, _CONNECTION_ERRORS)


def translate_error(
    exc: BaseException, what: str, connection_error: type[AsyncqError], error: type[AsyncqError]
) -> AsyncqError:
    """The asyncq error for a client-library exception (raise it ``from exc``)."""
    if isinstance(exc, AsyncqError):
        return exc
    if is_connection_error(exc):
        return connection_error(f"{what}: Redis is unreachable ({type(exc).__name__}: {exc})")
    return error(f"{what}: {exc}")


def retry_pause(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): 50 ms doubling to 2 s, jittered."""
    return max(0.01, backoff_delay(attempt, base=0.05, maximum=2.0))


async def call_with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout: float,
    attempt_timeout: float | None,
    connection_error: type[AsyncqError],
    error: type[AsyncqError],
    logger: logging.Logger,
) -> T:
    """Run ``op``, retrying with backoff on connection errors for up to ``timeout`` seconds.

    Each attempt may take ``attempt_timeout`` seconds (None: no limit) before its connection
    counts as dead. Only operations that are safe to repeat use this (an op that was applied
    but whose reply was lost runs again); every other error is translated and raised at once.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            async with asyncio.timeout(attempt_timeout):
                return await op()
        except (TimeoutError, RedisError, OSError) as exc:
            if not is_connection_error(exc):
                raise translate_error(exc, what, connection_error, error) from exc
            pause = retry_pause(attempt)
            if time.monotonic() + pause > deadline:
                raise translate_error(exc, what, connection_error, error) from exc
            log = logger.warning if attempt == 0 else logger.debug
            log("%s: Redis connection failed (%s); retrying in %.2fs", what, exc, pause)
            attempt += 1
            await asyncio.sleep(pause)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script called by SHA (EVALSHA), loaded again whenever Redis has forgotten it."""

    name: str
    source: str
    sha: str

    @classmethod
    def build(cls, name: str, source: str) -> Script:
        """Make a script, computing its SHA1 locally (what SCRIPT LOAD would return)."""
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


async def load_scripts(client: Redis, scripts: Sequence[Script]) -> None:
    """SCRIPT LOAD every script in one round trip (after a restart Redis has none)."""
    pipe = client.pipeline(transaction=False)
    for script in scripts:
        pipe.execute_command("SCRIPT", "LOAD", script.source)
    await pipe.execute()


async def eval_script(
    client: Redis, script: Script, keys: Sequence[bytes], args: Sequence[Any], scripts: Sequence[Script]
) -> Any:
    """EVALSHA ``script``; on NOSCRIPT load ``scripts`` and try once more."""
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    except NoScriptError:
        await load_scripts(client, scripts)
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]


async def eval_scripts(
    client: Redis,
    calls: Sequence[tuple[Script, Sequence[bytes], Sequence[Any]]],
    scripts: Sequence[Script],
) -> list[Any]:
    """Run several EVALSHAs in one pipelined round trip; return their replies in order.

    Calls that fail with NOSCRIPT (and only those: the others were applied) are run again
    after loading ``scripts``. Any other error reply is raised after the whole pipeline ran.
    """
    results = await _pipeline(client, calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        await load_scripts(client, scripts)
        retried = await _pipeline(client, [calls[i] for i in missing])
        for i, result in zip(missing, retried, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def _pipeline(
    client: Redis, calls: Sequence[tuple[Script, Sequence[bytes], Sequence[Any]]]
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    return results
