"""Plumbing shared by every Redis driver (broker, result backend, control channel, event bus).

* :mod:`~asyncq._redis.options`: a URL (one server, ``redis+cluster://``, ``redis+sentinel://``)
  and its query -> the driver's settings and connection options (unknown names refused);
* :mod:`~asyncq._redis.errors`: which errors a retry can cure; translation into asyncq errors;
* :mod:`~asyncq._redis.scripts`: Lua scripts (``.lua`` resources) called by SHA;
* :mod:`~asyncq._redis.group`: group commit (concurrent callers share one round trip);
* :mod:`~asyncq._redis.pools`, :mod:`~asyncq._redis.sentinel`, :mod:`~asyncq._redis.client`:
  the drivers' one view of a deployment (bounded pool or one multiplexed connection,
  Cluster topology refreshes, Sentinel failovers);
* :mod:`~asyncq._redis.holder`: the one connection holder each driver keeps.

Importing any of them without redis-py installed raises a MissingDependencyError that names
the extra.
"""

from __future__ import annotations

from asyncq.exceptions import MissingDependencyError

try:
    import redis.asyncio  # noqa: F401  (the submodules import from it)
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise MissingDependencyError.for_extra("redis", "redis") from exc

from asyncq._redis.client import Client
from asyncq._redis.errors import (
    CLIENT_ERRORS,
    MasterSwitchedError,
    PoolExhaustedError,
    ReplicaAckError,
    ResponseError,
    is_connection_error,
    retry_pause,
    translate_error,
)
from asyncq._redis.group import GroupCommit
from asyncq._redis.holder import ClientHolder
from asyncq._redis.options import (
    CONNECTION_DEFAULTS,
    CONNECTION_OPTIONS,
    DRIVER_OPTION_NAMES,
    Option,
    Target,
    parse_options,
    plain_prefix,
)
from asyncq._redis.scripts import Script, load_lua, script_call

__all__ = [
    "CLIENT_ERRORS",
    "CONNECTION_DEFAULTS",
    "CONNECTION_OPTIONS",
    "DRIVER_OPTION_NAMES",
    "Client",
    "ClientHolder",
    "GroupCommit",
    "MasterSwitchedError",
    "Option",
    "PoolExhaustedError",
    "ReplicaAckError",
    "ResponseError",
    "Script",
    "Target",
    "is_connection_error",
    "load_lua",
    "parse_options",
    "plain_prefix",
    "retry_pause",
    "script_call",
    "translate_error",
]
