"""Redis errors: which ones a retry can cure, and their translation into the asyncq error tree.

redis-py's exceptions stop here: drivers catch :data:`CLIENT_ERRORS` and raise what
:func:`translate_error` makes of them, so that no redis type leaks to users.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final

from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncq._utils import backoff_delay, describe_error
from asyncq.exceptions import AsyncqError

__all__ = [
    "CLIENT_ERRORS",
    "MasterSwitchedError",
    "PoolExhaustedError",
    "ReplicaAckError",
    "ResponseError",
    "is_connection_error",
    "retry_pause",
    "translate_error",
]


class PoolExhaustedError(RedisError):
    """No connection of the pool became free within ``pool_timeout``."""

    @classmethod
    def after(cls, pool_timeout: float | None, max_connections: int | None) -> PoolExhaustedError:
        return cls(
            f"no free Redis connection within pool_timeout={pool_timeout}s "
            f"(max_connections={max_connections}); raise max_connections"
        )


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
