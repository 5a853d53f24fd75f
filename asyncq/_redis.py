"""Plumbing shared by the Redis broker and result backend.

Owns what both drivers need and neither should repeat: parsing a Redis URL (one server,
``redis+cluster://`` or ``redis+sentinel://``) and its query into asyncq options and
connection options (refusing unknown names); :class:`Client`, the drivers' one view of a
deployment (a bounded connection pool that waits instead of failing, Lua scripts called by
SHA with a fallback when Redis forgot them, pipelines, dedicated connections for blocking
reads and subscriptions, Cluster topology refreshes, Sentinel master switches); group commit;
retries where they are safe; and translating redis-py exceptions into the asyncq error tree
at the boundary. redis-py's own silent retries are switched off everywhere: we retry where it
is safe and say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT, connect_timeout_value
from asyncq._utils import backoff_delay, describe_error, redact_url
from asyncq.exceptions import AsyncqError, ConfigurationError, MissingDependencyError

try:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, Connection
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        ClusterDownError,
        MaxConnectionsError,
        NoScriptError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from asyncq import _resp
    from asyncq._resp import pack_commands
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise MissingDependencyError.for_extra("redis", "redis") from exc

__all__ = [
    "CLIENT_ERRORS",
    "CONNECTION_OPTIONS",
    "DRIVER_OPTION_NAMES",
    "Client",
    "GroupCommit",
    "MasterSwitchedError",
    "Option",
    "PoolExhaustedError",
    "ReplicaAckError",
    "ResponseError",
    "Script",
    "Target",
    "is_connection_error",
    "pack_commands",
    "parse_options",
    "retry_pause",
    "script_call",
    "translate_error",
]

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)

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

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

#: What to check when the first connect fails.
_UNREACHABLE_HINT: Final = "is Redis running there, and is it the right host, port and password?"
#: Seconds of silence on the Sentinel subscription before a PING checks it is alive.
_SENTINEL_PING_INTERVAL: Final = 5.0
#: Longest commands are held back while Sentinel fails our master over (it normally takes a
#: second or two; an abort or +switch-master ends the hold sooner).
_FAILOVER_HOLD: Final = 30.0
#: Sentinel events that start or end a failover (``+switch-master`` is handled apart).
_FAILOVER_STARTS: Final = frozenset({b"+try-failover"})
_FAILOVER_ENDS: Final = frozenset(
    {
        b"-failover-abort-not-elected",
        b"-failover-abort-no-good-slave",
        b"-failover-abort-slave-timeout",
        b"+failover-end-for-timeout",
    }
)


class PoolExhaustedError(RedisError):
    """No connection of the pool became free within ``pool_timeout``."""


class ReplicaAckError(RedisConnectionError):
    """The master applied a write, but fewer than ``min_replicas`` replicas confirmed it in time."""


class MasterSwitchedError(RedisConnectionError):
    """Sentinel named a new master: what was in flight on the old one counts as a dropped connection."""


#: Errors after which a retry (on a fresh connection, or after the Cluster settled) can
#: succeed. The command may or may not have been applied.
_CONNECTION_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)

#: Everything a Redis call can raise (TimeoutError is an OSError); drivers catch this tuple,
#: so that they need not import redis themselves (that import must fail here, with the hint).
CLIENT_ERRORS: Final = (RedisError, RedisClusterException, OSError)


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
        db = _convert("db", segments[1], int) if len(segments) == 2 else 0
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
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    merged: dict[str, Any] = {
        name: value for name, value in query if name in known or name not in DRIVER_OPTION_NAMES
    }
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
    target = _target(url, bool(connection.get("cluster", False)))
    return target, settings, connection


def is_connection_error(exc: BaseException) -> bool:
    """True for errors after which a retry on a fresh connection can succeed."""
    # MaxConnectionsError is a ConnectionError in redis-py, but retrying it only spins; a
    # certificate that does not verify will not verify on the next attempt either.
    return (
        isinstance(exc, _CONNECTION_ERRORS)
        and not isinstance(exc, MaxConnectionsError)
        and not _certificate_refused(exc)
    )


def _certificate_refused(exc: BaseException) -> bool:
    """True if the TLS handshake failed because the server's certificate does not verify."""
    seen: BaseException | None = exc
    for _ in range(5):  # redis-py wraps the ssl error once or twice
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def translate_error(
    exc: BaseException, what: str, connection_error: type[AsyncqError], error: type[AsyncqError]
) -> AsyncqError:
    """The asyncq error for a client-library exception (raise it ``from exc``)."""
    if isinstance(exc, AsyncqError):
        return exc
    if isinstance(exc, PoolExhaustedError | MaxConnectionsError):
        return connection_error(f"{what}: {describe_error(exc)}")
    if isinstance(exc, ReplicaAckError):
        return connection_error(f"{what}: {describe_error(exc)}")
    if _certificate_refused(exc):
        return connection_error(
            f"{what}: the server's TLS certificate does not verify ({exc}); "
            "check ssl_ca_certs and the host name (docs/security.md, TLS)"
        )
    if is_connection_error(exc):
        return connection_error(f"{what}: Redis is unreachable ({describe_error(exc, with_type=True)})")
    return error(f"{what}: {describe_error(exc)}")


def retry_pause(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): 50 ms doubling to 2 s, jittered."""
    return max(0.01, backoff_delay(attempt, base=0.05, maximum=2.0))


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


def script_call(script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> tuple[Any, ...]:
    """The EVALSHA command that runs ``script`` (for :meth:`Client.pipeline`)."""
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


class GroupCommit(Generic[T, R]):
    """Group commit: items submitted while a flush is in flight go out together in the next.

    ``submit`` returns (the flush's result for its item) once its own item was applied, so
    callers keep their guarantee while a burst of concurrent callers shares one round trip
    and one connection instead of taking one each. A caller that finds nothing in flight
    flushes its item itself, in its own task: a lone call costs no extra scheduling hop.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        name: str,
        closed: Callable[[], Exception],
    ) -> None:
        self._flush = flush
        self._name = name
        self._closed = closed
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._direct: asyncio.Future[None] | None = None  # done when a caller's own flush ends

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next flush; return its result once that flush ran."""
        if self._task is None and self._direct is None:
            return await self._flush_directly(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))  # the flush in flight starts the next one
        return await future

    async def _flush_directly(self, item: T) -> R:
        self._direct = asyncio.get_running_loop().create_future()
        try:
            (result,) = await self._flush([item])
            return result
        finally:
            direct, self._direct = self._direct, None
            direct.set_result(None)
            if self._pending:  # what arrived meanwhile goes out in the next flush
                self._task = asyncio.create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        try:
            while self._pending:
                self._inflight, self._pending = self._pending, []
                try:
                    results = await self._flush([item for item, _ in self._inflight])
                except Exception as exc:
                    for _, future in self._inflight:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(self._inflight, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                self._inflight = []
        finally:
            self._task = None
            for _, future in self._inflight + self._pending:  # only when cancelled (aclose)
                if not future.done():
                    future.set_exception(self._closed())
            self._inflight, self._pending = [], []

    async def close(self) -> None:
        """Let the flush in progress (and what queued behind it) finish."""
        if self._direct is not None:
            await asyncio.wait((self._direct,))
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


class _BlockingPool(BlockingConnectionPool):
    """A pool that waits up to ``pool_timeout`` for a free connection, then fails distinctly.

    redis-py reports the wait running out as a plain ConnectionError, which a retry loop would
    take for an outage and repeat; a PoolExhaustedError is never retried.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhaustedError(
                    f"no free Redis connection within pool_timeout={self.timeout}s "
                    f"(max_connections={self.max_connections}); raise max_connections"
                ) from exc
            raise
        return connection


class _BlockingSentinelPool(SentinelConnectionPool, _BlockingPool):
    """The Sentinel-managed master pool, bounded and waiting like :class:`_BlockingPool`."""


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class Client:
    """The drivers' view of one Redis deployment: a server, a Cluster, or a Sentinel master.

    Every command goes through here, so the three deployments look alike to the drivers:

    * **One multiplexed connection** (``multiplex``, the default, on a server or under
      Sentinel): every command of the drivers' hot path is written at once to one shared
      connection and matched to its reply by position (:mod:`asyncq._resp`), so concurrent
      callers pipeline without checking anything out.
    * **Pool.** Otherwise (a Cluster, ``min_replicas`` > 0, ``multiplex=false``), at most
      ``max_connections`` pooled connections (per node on a Cluster); a caller beyond that
      waits up to ``pool_timeout`` for one to be free, then gets a
      :class:`PoolExhaustedError`, which is never retried.
    * **Scripts** run by SHA and are loaded again wherever Redis lost them (a restart, a
      promoted replica).
    * **Durability.** With ``min_replicas`` > 0 (server and Sentinel), :meth:`pipeline` with
      ``replicate=True`` ends with ``WAIT`` on the same connection and fails (retryably)
      unless that many replicas confirmed the writes: what a failover can lose is never
      reported as stored.
    * **Topology.** On a Cluster, a failed or redirected call refreshes the slot map before
      the caller retries. Under Sentinel, a watcher follows the failover of our master:
      commands wait while it runs, and after ``+switch-master`` pooled connections are
      re-established against the new master and blocking readers are told through
      :meth:`switched`, as if their connections had dropped.
    """

    def __init__(
        self,
        target: Target,
        connection: Mapping[str, Any],
        *,
        client_name: str,
        retry_timeout: float,
        connection_error: type[AsyncqError],
        error: type[AsyncqError],
        log: logging.Logger,
    ) -> None:
        kwargs: dict[str, Any] = {**CONNECTION_DEFAULTS, "client_name": client_name, **connection}
        # socket_timeout is not given to redis-py: its send path wraps writes in
        # asyncio.wait_for, which on Python 3.11 can swallow the caller's cancellation (a
        # consumer that will not stop). We apply it around each command with asyncio.timeout
        # instead; redis-py answers that by dropping the connection, as on its own timeout.
        self.command_timeout: float | None = kwargs.pop("socket_timeout") or None
        self.connect_timeout = connect_timeout_value(kwargs.pop("connect_timeout"))
        self.max_connections: int = kwargs.pop("max_connections")
        self.pool_timeout: float = kwargs.pop("pool_timeout")
        self.min_replicas: int = kwargs.pop("min_replicas")
        self.replica_timeout: float = kwargs.pop("replica_timeout")
        multiplex: bool = kwargs.pop("multiplex")
        kwargs.pop("cluster", None)
        sentinel_auth = {
            "username": kwargs.pop("sentinel_username", None),
            "password": kwargs.pop("sentinel_password", None),
        }
        if self.max_connections < 1 or self.pool_timeout <= 0:
            raise ConfigurationError(
                f"max_connections must be >= 1 and pool_timeout > 0; got {self.max_connections}, "
                f"{self.pool_timeout}"
            )
        if self.min_replicas < 0 or self.replica_timeout <= 0:
            raise ConfigurationError(
                f"min_replicas must be >= 0 and replica_timeout > 0; got {self.min_replicas}, "
                f"{self.replica_timeout}"
            )
        self.target = target
        self.kind = target.kind
        self.retry_timeout = retry_timeout
        self._connection_error = connection_error
        self._error = error
        self._log = log
        self._gate: asyncio.Semaphore | None = None
        self._pool: _BlockingPool | None = None  # the pool, outside a Cluster
        self._cluster: RedisCluster | None = None  # self.redis, on a Cluster (isinstance is slow on it)
        self._sentinel: Sentinel | None = None
        self._sentinel_kwargs: dict[str, Any] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._switch: asyncio.Future[None] | None = None
        self._hold: asyncio.Future[None] | None = None  # while Sentinel fails our master over
        self._hold_timer: asyncio.TimerHandle | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._closing = False
        # The multiplexed connection of the hot path (see asyncq._resp), outside a Cluster.
        # Not with min_replicas: its WAIT would block every caller sharing the connection.
        self._mux: _resp.Multiplexed | None = None
        self._mux_lock = asyncio.Lock()
        self._multiplex = (
            multiplex and _resp.AVAILABLE and target.kind != "cluster" and self.min_replicas == 0
        )
        common: dict[str, Any] = {"decode_responses": False, "socket_timeout": None, "protocol": 2}
        try:
            if target.kind == "server":
                pool = _BlockingPool.from_url(
                    target.url,
                    max_connections=self.max_connections,
                    timeout=self.pool_timeout,
                    retry=_no_retry(),
                    **common,
                    **kwargs,
                )
                self._pool = pool
                self.redis: Redis | RedisCluster = Redis(connection_pool=pool)
            elif target.kind == "sentinel":
                self.redis = self._sentinel_client(kwargs, common, sentinel_auth)
            else:
                self.redis = self._cluster_client(kwargs, common)
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            shown = redact_url(target.url)
            raise ConfigurationError(f"invalid Redis URL or option for {shown!r}: {exc}") from exc

    def _sentinel_client(self, kwargs: dict[str, Any], common: dict[str, Any], auth: dict[str, Any]) -> Redis:
        if any(name.startswith("ssl_") for name in kwargs):
            raise ConfigurationError("ssl_* options are not supported with redis+sentinel:// yet")
        target = self.target
        # No socket_timeout here either (see __init__): every wait on a sentinel happens
        # within one of ours (a command's, a connect's, the watcher's).
        self._sentinel_kwargs = {
            "socket_timeout": None,
            "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
            "client_name": f"{kwargs['client_name']}:sentinel",
            "retry": _no_retry(),
            "protocol": 2,
            **{name: value for name, value in auth.items() if value is not None},
        }
        self._sentinel = Sentinel(list(target.nodes), sentinel_kwargs=self._sentinel_kwargs)  # type: ignore[no-untyped-call]
        kwargs.setdefault("username", target.username)
        kwargs.setdefault("password", target.password)
        kwargs.setdefault("db", target.db)
        pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            target.service,
            self._sentinel,
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            retry=_no_retry(),
            **common,
            **kwargs,
        )
        self._pool = pool
        return Redis(connection_pool=pool)

    def _cluster_client(self, kwargs: dict[str, Any], common: dict[str, Any]) -> RedisCluster:
        if kwargs.pop("db", 0):
            raise ConfigurationError("Redis Cluster has only database 0; remove the db option")
        if self.min_replicas:
            # WAIT must follow the writes on their connection; a Cluster pipeline spreads
            # them over one connection per node, out of our hands.
            raise ConfigurationError("min_replicas is not supported on Redis Cluster")
        if "ssl_password" in kwargs:
            raise ConfigurationError("ssl_password is not supported on Redis Cluster")
        target = self.target
        kwargs.setdefault("username", target.username)
        kwargs.setdefault("password", target.password)
        # Each node has its own pool of max_connections that fails when full; the gate makes
        # callers wait instead. One gated call uses at most one connection per node.
        self._gate = asyncio.Semaphore(self.max_connections)
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=self.max_connections,
            retry=_no_retry(),
            ssl=target.tls,
            **common,
            **kwargs,
        )
        return self._cluster

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, scripts: Sequence[Script]) -> None:
        """Connect (find the Cluster's nodes, the Sentinel master) and load ``scripts``.

        Retries connection failures for up to ``retry_timeout``.
        """

        async def attempt() -> None:
            if self._cluster is not None:
                await self._cluster.initialize()
            await self.load_scripts(scripts)

        shown = redact_url(self.target.url)
        try:
            # One deadline for the whole connect, retries included: an attempt against a
            # silent host can itself take socket_connect_timeout.
            async with asyncio.timeout(self.connect_timeout):
                # Quiet: if it keeps failing, the one error raised says it all.
                await self.retrying(f"connect to {shown}", attempt, timeout=self.connect_timeout, quiet=True)
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise self._connection_error(
                    f"connect to {shown}: no answer within connect_timeout={self.connect_timeout:g}s; "
                    f"{_UNREACHABLE_HINT}"
                ) from None
            if isinstance(exc, self._connection_error) and isinstance(exc.__cause__, MasterNotFoundError):
                # redis-py's message is the repr of its client: name what was asked instead.
                sentinels = ",".join(f"{host}:{port}" for host, port in self.target.nodes)
                raise self._connection_error(
                    f"connect to {shown}: no sentinel at {sentinels} gave the address of master "
                    f"{self.target.service!r}; are the sentinels running, and is that the master's name?"
                ) from exc
            if isinstance(exc, self._connection_error):
                raise self._connection_error(f"{exc}; {_UNREACHABLE_HINT}") from exc
            raise
        if self.kind == "sentinel":
            self._switch = asyncio.get_running_loop().create_future()
            self._watcher = asyncio.create_task(self._watch_sentinels(), name="asyncq.redis.sentinel-watch")

    async def aclose(self) -> None:
        """Stop the Sentinel watcher and close every pooled connection."""
        self._closing = True
        for task in (self._watcher, self._refreshing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watcher = self._refreshing = None
        if self._switch is not None and not self._switch.done():
            self._switch.set_result(None)  # blocking readers stop waiting on the switch
        self._release_hold()
        self._drop_mux()
        if self._cluster is not None:
            await self._cluster.aclose()
        elif self._pool is not None:
            await self._pool.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    # -- calls -------------------------------------------------------------------------------

    async def _held(self) -> None:
        # asyncio.wait, not await: cancelling a waiter must not cancel the shared future.
        if self._hold is not None:
            await asyncio.wait((self._hold,))

    async def _gated(self, op: Callable[[], Awaitable[T]]) -> T:
        await self._held()
        gate = self._gate
        if gate is None:
            return await op()
        try:
            async with asyncio.timeout(self.pool_timeout):
                await gate.acquire()
        except TimeoutError:
            raise PoolExhaustedError(
                f"no free Redis connection within pool_timeout={self.pool_timeout}s "
                f"(max_connections={self.max_connections}); raise max_connections"
            ) from None
        try:
            return await op()
        finally:
            gate.release()

    async def execute(self, *args: Any) -> Any:
        """One command, never a blocking one; its raw reply (the drivers send none that redis-py reshapes)."""
        if self._multiplex:
            (reply,) = await self._send(pack_commands((args,)), 1)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return await self._gated(lambda: self.redis.execute_command(*args))

    async def eval(
        self, script: Script, keys: Sequence[bytes], args: Sequence[Any], scripts: Sequence[Script]
    ) -> Any:
        """EVALSHA ``script``; on NOSCRIPT load ``scripts`` and try once more."""
        try:
            return await self.execute(*script_call(script, keys, args))
        except NoScriptError:
            await self.load_scripts(scripts)
            return await self.execute(*script_call(script, keys, args))

    async def load_scripts(self, scripts: Sequence[Script]) -> None:
        """SCRIPT LOAD every script (on a Cluster: on every primary)."""
        cluster = self._cluster
        if cluster is not None:
            for script in scripts:
                await self._gated(lambda s=script: cluster.script_load(s.source))  # type: ignore[misc]
            return
        await self._pipeline_once([("SCRIPT", "LOAD", script.source) for script in scripts], False)

    async def pipeline(
        self, commands: Sequence[tuple[Any, ...]], scripts: Sequence[Script], *, replicate: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one pipelined round trip; return their replies in order.

        EVALSHAs that fail with NOSCRIPT (and only those: the others were applied) are sent
        again after loading ``scripts``. Any other error reply is raised after the whole
        pipeline ran. ``replicate``: wait for ``min_replicas`` replicas (see the class).
        """
        wait = replicate and self.min_replicas > 0
        results = await self._pipeline_once(commands, wait)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self.load_scripts(scripts)
            retried = await self._pipeline_once([commands[i] for i in missing], wait)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline_once(self, commands: Sequence[tuple[Any, ...]], wait: bool) -> list[Any]:
        if wait:
            commands = [*commands, ("WAIT", self.min_replicas, max(1, round(self.replica_timeout * 1000)))]
        if self._cluster is not None:
            cluster = self._cluster

            async def run() -> list[Any]:
                pipe = cluster.pipeline()
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies

            results = await self._gated(run)
        else:
            results = await self._send(pack_commands(commands), len(commands))
        if wait:
            acked = results.pop()
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < self.min_replicas:
                raise ReplicaAckError(
                    f"only {acked} of min_replicas={self.min_replicas} replicas confirmed the write "
                    f"within {self.replica_timeout}s (a failover could lose it)"
                )
        return results

    async def _send(self, packed: bytes, count: int) -> list[Any]:
        """Write pre-packed commands and read ``count`` replies (error replies in place).

        On the multiplexed connection when there is one (no checkout: concurrent callers
        pipeline over it); else on a pooled connection, as redis-py's Pipeline does, without
        the bookkeeping we do not use. Any other failure drops the pooled connection, whose
        replies can no longer be matched to their commands.
        """
        await self._held()
        if self._multiplex:
            mux = self._mux
            if mux is None or not mux.usable:
                mux = await self._open_mux()
            answered = await mux.call(packed, count)
            if self.kind == "sentinel" and any(isinstance(reply, ReadOnlyError) for reply in answered):
                # Our master was demoted (redis-py's Sentinel connections do the same): nothing
                # was written; reconnect to the master the sentinels name now, and retry.
                self._drop_mux()
                raise RedisConnectionError("the Sentinel master was demoted to a replica (READONLY)")
            return answered
        pool = self._pool
        assert pool is not None
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    async def _open_mux(self) -> _resp.Multiplexed:
        """(Re)connect the multiplexed connection; concurrent callers share one attempt."""
        async with self._mux_lock:
            mux = self._mux
            if mux is not None and mux.usable:
                return mux
            if self._closing:
                raise RedisConnectionError("the Redis client is closed")
            pool = self._pool
            assert pool is not None
            kwargs = pool.connection_kwargs
            ssl_context = None
            if self.target.tls:
                # redis-py builds the context from the ssl_* options; reuse it, not its socket.
                ssl_context = pool.connection_class(**kwargs).ssl_context.get()  # type: ignore[attr-defined]
            name = kwargs.get("client_name") or "asyncq"
            # Bounded as a whole: asking the sentinels, connecting and the handshake.
            async with asyncio.timeout(kwargs.get("socket_connect_timeout")):
                if self.kind == "sentinel":
                    host, port = await pool.get_master_address()  # type: ignore[attr-defined]
                else:
                    host, port = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)
                self._mux = await _resp.open_multiplexed(
                    host,
                    int(port),
                    name=f"{name}@{host}:{port}",
                    db=int(kwargs.get("db") or 0),
                    username=kwargs.get("username"),
                    password=kwargs.get("password"),
                    client_name=name,
                    ssl_context=ssl_context,
                    keepalive=bool(kwargs.get("socket_keepalive", True)),
                    timeout=self.command_timeout,
                )
            return self._mux

    def _drop_mux(self) -> None:
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.close()

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in one round trip (MGET; one GET per key on a Cluster)."""
        if self._cluster is not None:
            return await self.pipeline([("GET", key) for key in keys], ())
        values: list[bytes | None] = await self.execute("MGET", *keys)
        return values

    # -- retries -------------------------------------------------------------------------------

    async def retrying(
        self, what: str, op: Callable[[], Awaitable[T]], *, timeout: float | None = None, quiet: bool = False
    ) -> T:
        """Run ``op``, retrying with backoff on connection errors for up to ``retry_timeout``.

        Each attempt may take ``socket_timeout`` seconds before its connection counts as
        dead. Only operations that are safe to repeat use this (an op that was applied but
        whose reply was lost runs again); every other error is translated and raised at once.
        A full pool is not an outage: it is raised at once too.
        """
        deadline = time.monotonic() + (self.retry_timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                if self._multiplex:  # the connection bounds each call's wait itself
                    return await op()
                async with asyncio.timeout(self.command_timeout):
                    return await op()
            except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
                if not is_connection_error(exc):
                    raise translate_error(exc, what, self._connection_error, self._error) from exc
                self.failed(exc)
                pause = retry_pause(attempt)
                if time.monotonic() + pause > deadline:
                    raise translate_error(exc, what, self._connection_error, self._error) from exc
                log = self._log.warning if attempt == 0 and not quiet else self._log.debug
                log("%s: Redis connection failed (%s); retrying in %.2fs", what, exc, pause)
                attempt += 1
                await asyncio.sleep(pause)

    async def once(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` once within ``socket_timeout``, translating errors (for unsafe-to-repeat ops)."""
        try:
            if self._multiplex:
                return await op()
            async with asyncio.timeout(self.command_timeout):
                return await op()
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            if is_connection_error(exc):
                self.failed(exc)
            raise translate_error(exc, what, self._connection_error, self._error) from exc

    def failed(self, exc: BaseException) -> None:
        """Note a failed call: drop a hung multiplexed connection; refresh a Cluster's slot map.

        A timeout means the server did not answer in time: the shared connection may be
        half-open, and its next user should not wait the same time again. (Other failures of
        that connection have already closed it.) A Cluster refreshes once for a burst.
        """
        if isinstance(exc, TimeoutError) and self._mux is not None:
            self._drop_mux()
        if self._cluster is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="asyncq.redis.cluster-refresh")

    async def _refresh(self) -> None:
        assert self._cluster is not None
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._cluster.nodes_manager.initialize()
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            # The next failure asks again; until the Cluster settles, calls keep failing.
            logger.debug("Redis Cluster slot map refresh failed: %s", describe_error(exc))
        else:
            logger.debug("Redis Cluster slot map refreshed")

    # -- dedicated connections -------------------------------------------------------------------

    def slot_of(self, key: bytes) -> int:
        """The Cluster hash slot of ``key`` (0 outside a Cluster): one script's keys share one."""
        if self._cluster is not None:
            return self._cluster.keyslot(key)
        return 0

    def node_of(self, key: bytes) -> str:
        """The node that serves ``key`` ("" outside a Cluster): keys of one node share a connection."""
        if self._cluster is not None:
            node = self._cluster.get_node_from_key(key)  # type: ignore[arg-type]
            return node.name if node is not None else ""
        return ""

    def dedicated_connection(self, key: bytes | None = None, *, name_suffix: str = "") -> AbstractConnection:
        """A connection outside the pool, for a blocking read or a subscription.

        On a Cluster it goes to the primary serving ``key`` (any primary if None). Under
        Sentinel it asks the sentinels for the master each time it (re)connects.
        """
        cluster = self._cluster
        if cluster is not None:
            node = cluster.get_node_from_key(key) if key is not None else cluster.get_random_primary_node()  # type: ignore[arg-type]
            if node is None:
                raise SlotNotCoveredError(f"no Redis Cluster node serves {key!r}")
            kwargs = dict(node.connection_kwargs)
            kwargs["retry"] = _no_retry()
            connection_class: type[AbstractConnection] = node.connection_class
        else:
            assert self._pool is not None
            kwargs = dict(self._pool.connection_kwargs)
            connection_class = self._pool.connection_class
        if name_suffix:
            kwargs["client_name"] = f"{kwargs.get('client_name') or 'asyncq'}{name_suffix}"
        return connection_class(**kwargs)

    def switched(self) -> asyncio.Future[None] | None:
        """Under Sentinel, a future done at the next master switch (None elsewhere).

        A blocking reader waits for it alongside its read and treats it like a dropped
        connection; the future is shared (``asyncio.wait`` never cancels it).
        """
        return self._switch

    # -- Sentinel --------------------------------------------------------------------------------

    async def _watch_sentinels(self) -> None:
        """Follow one sentinel after another: hold commands during a failover, switch after it.

        From ``+try-failover`` (Sentinel starts failing our master over; it promotes a replica
        a few timer ticks later) until ``+switch-master`` (or an abort), commands wait instead
        of going to the old master, where writes made after the promotion would be lost when
        it is turned into a replica. ``+switch-master`` re-establishes every connection.
        """
        nodes = self.target.nodes
        failures = 0
        index = 0
        logger.debug("Sentinel watcher of %r started", self.target.service)
        try:
            # The flag as well as the cancellation: a cancellation can be lost in redis-py.
            while not self._closing:
                host, port = nodes[index % len(nodes)]
                conn = Connection(host=host, port=port, **self._sentinel_kwargs)
                try:
                    async with asyncio.timeout(self.command_timeout):
                        await conn.connect()  # type: ignore[no-untyped-call]
                        channels = [b"+switch-master", *_FAILOVER_STARTS, *_FAILOVER_ENDS]
                        await conn.send_command("SUBSCRIBE", *channels)
                        for _ in channels:
                            await conn.read_response()
                        # A switch while nobody listened is only visible in the sentinels' answer.
                        await self._check_master()
                    failures = 0
                    await self._follow(conn)
                except (TimeoutError, RedisError, OSError) as exc:
                    pause = retry_pause(failures)
                    log = logger.warning if failures == 0 else logger.debug
                    log("Sentinel %s:%s: %s; trying the next in %.2fs", host, port, exc, pause)
                    failures += 1
                    index += 1
                    await asyncio.sleep(pause)
                finally:
                    await conn.disconnect(nowait=True)
        finally:
            logger.debug("Sentinel watcher of %r stopped", self.target.service)

    async def _follow(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        service = self.target.service.encode()
        while not self._closing:
            reply = await conn.read_response(timeout=_SENTINEL_PING_INTERVAL)
            if reply is None:
                if awaiting_pong:
                    raise TimeoutError(f"no reply to PING within {_SENTINEL_PING_INTERVAL}s")
                awaiting_pong = True
                await conn.send_command("PING")
                continue
            awaiting_pong = False
            if not isinstance(reply, list) or reply[0] != b"message":
                continue
            channel, fields = reply[1], reply[2].split()
            if channel == b"+switch-master":
                # Payload: "<name> <old ip> <old port> <new ip> <new port>".
                if fields and fields[0] == service:
                    await self._master_switched(f"{fields[1].decode()}:{fields[2].decode()}", fields[3:5])
            elif fields[:2] == [b"master", service]:  # "master <name> <ip> <port> ..."
                if channel in _FAILOVER_STARTS:
                    self._hold_commands()
                elif channel in _FAILOVER_ENDS:
                    logger.warning(
                        "Sentinel: failover of %r ended (%s)", self.target.service, channel.decode()
                    )
                    self._release_hold()

    def _hold_commands(self) -> None:
        if self._hold is None:
            logger.warning(
                "Sentinel: failing over %r; holding commands until it is done", self.target.service
            )
            loop = asyncio.get_running_loop()
            self._hold = loop.create_future()
            self._hold_timer = loop.call_later(_FAILOVER_HOLD, self._release_hold)

    def _release_hold(self) -> None:
        hold, self._hold = self._hold, None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if hold is not None and not hold.done():
            hold.set_result(None)

    async def _check_master(self) -> None:
        assert self._sentinel is not None
        known = getattr(self._pool, "master_address", None)
        current = await self._sentinel.discover_master(self.target.service)
        if known is not None and tuple(known) != tuple(current):
            await self._master_switched(f"{known[0]}:{known[1]}", [str(v).encode() for v in current])

    async def _master_switched(self, old: str, new: Sequence[bytes]) -> None:
        pool = self._pool
        assert pool is not None
        logger.warning(
            "Sentinel: master %r moved from %s to %s; reconnecting",
            self.target.service,
            old,
            ":".join(part.decode() for part in new),
        )
        # Connections in use finish their command and are re-established when returned;
        # idle ones now. New connections ask the sentinels, which already name the new master.
        await pool.update_active_connections_for_reconnect()  # type: ignore[no-untyped-call]
        await pool.disconnect(inuse_connections=False)
        self._drop_mux()  # what is in flight on the old master fails, and is retried
        switch, self._switch = self._switch, asyncio.get_running_loop().create_future()
        if switch is not None and not switch.done():
            switch.set_result(None)
        self._release_hold()
