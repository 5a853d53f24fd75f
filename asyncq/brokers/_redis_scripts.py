"""The Redis broker's Lua scripts (``redis_lua/*.lua``), its keys and its record format.

Key layout per queue (``{q}`` is a Redis Cluster hash tag, so one queue's keys share a slot
and every script touches a single slot)::

    <prefix>:{q}:ready:0 .. ready:9  list    handles waiting, one list per priority (9 first)
    <prefix>:{q}:delayed             zset    handle -> eta (ms, Redis clock); never leased
    <prefix>:{q}:inflight            zset    handle -> lease deadline (ms, Redis clock)
    <prefix>:{q}:msg                 hash    handle -> "<len(id)>:<id><body>"
    <prefix>:{q}:count               hash    handle -> delivery count (HINCRBY at each claim)
    <prefix>:{q}:wake                list    at most one wake-up token, BLPOPed by idle consumers
    <prefix>:{q}:dead                list    "<ms>:<len(reason)>:<reason><len(id)>:<id><body>"
    <prefix>:{q}:owner               hash    handle -> the claiming broker's owner id
    <prefix>:{q}:fair:<p>:<key>      list    fair handles of one key waiting at priority p
    <prefix>:{q}:ring:<p>            list    keys of priority p with waiting fair handles, in turn order
    <prefix>:{q}:credit:<p>          hash    key -> messages left in its current turn
    <prefix>:{q}:fairp               set     priorities whose ring is not empty

A fair message's handle is the plain one followed by ``<weight>:<key>`` (``fair_suffix``),
so every script that makes a handle ready again (due, expired, nacked, released) sends it
back to its key's sub-list.

Every script gets a queue's keys in that order (``KEYS[1]`` .. ``KEYS[17]``, see
``redis_lua/prelude.lua``).
"""

from __future__ import annotations

import random
from typing import Final

from asyncq._redis import Script, load_lua
from asyncq.brokers.base import DeadLetter, OutgoingMessage

__all__ = [
    "ACK",
    "CHUNK",
    "CLAIM",
    "fair_suffix",
    "DEAD",
    "DEAD_PURGE",
    "DEAD_REQUEUE_ALL",
    "DEAD_REQUEUE_ONE",
    "FAIR_KEYS",
    "LENGTH",
    "MOVE_LIMIT",
    "NACK",
    "PRIORITY_DIGITS",
    "PUBLISH",
    "PURGE",
    "RECLAIM",
    "RELEASE",
    "RENEW",
    "SCRIPTS",
    "Queue",
    "pack_record",
    "parse_dead_entry",
    "split_record",
    "token",
]


def _load(name: str, *prelude: str) -> Script:
    return load_lua("asyncq.brokers", "redis_lua", name, prelude=prelude)


PUBLISH: Final = _load("publish", "prelude")
CLAIM: Final = _load("claim", "prelude")
RENEW: Final = _load("renew", "prelude")
ACK: Final = _load("ack")
NACK: Final = _load("nack", "prelude")
RELEASE: Final = _load("release", "prelude")
DEAD: Final = _load("dead", "prelude")
LENGTH: Final = _load("length", "prelude")
FAIR_KEYS: Final = _load("fair_keys", "prelude")
PURGE: Final = _load("purge", "prelude")
RECLAIM: Final = _load("reclaim", "prelude")
DEAD_REQUEUE_ONE: Final = _load("dead_requeue_one", "prelude", "dead_prelude")
DEAD_REQUEUE_ALL: Final = _load("dead_requeue_all", "prelude", "dead_prelude")
DEAD_PURGE: Final = _load("dead_purge")

#: Every script of the broker: loaded at connect, and again wherever Redis forgot them.
SCRIPTS: Final = (
    PUBLISH,
    CLAIM,
    RENEW,
    ACK,
    NACK,
    RELEASE,
    DEAD,
    LENGTH,
    FAIR_KEYS,
    PURGE,
    RECLAIM,
    DEAD_REQUEUE_ONE,
    DEAD_REQUEUE_ALL,
    DEAD_PURGE,
)

#: Most due or expired messages one claim moves; the next claim moves the rest.
MOVE_LIMIT: Final = 1000
#: Most handles per ack / renew / release script call (Lua's unpack() has a stack limit).
CHUNK: Final = 1000
PRIORITY_DIGITS: Final = tuple(str(p).encode() for p in range(10))


class Queue:
    """The (pre-encoded) keys of one queue."""

    __slots__ = ("dead", "keys", "name", "wake")

    def __init__(self, prefix: str, name: str) -> None:
        base = f"{prefix}:{{{name}}}:"
        suffixes = [f"ready:{p}" for p in range(10)]
        suffixes += ["delayed", "inflight", "msg", "count", "wake", "dead", "owner"]
        self.name = name
        self.keys: tuple[bytes, ...] = tuple((base + s).encode() for s in suffixes)
        self.wake = self.keys[14]
        self.dead = self.keys[15]


def token() -> bytes:
    """96 random bits: unique per publish, across producers and across Redis losing writes."""
    # (random reseeds itself in a forked child, so worker processes draw their own.)
    return b"%024x" % random.getrandbits(96)


def fair_suffix(key: str, weight: int) -> bytes:
    """What follows a fair message's handle: ``b"<weight>:<key>"``."""
    return b"%d:%b" % (weight, key.encode())


def pack_record(message: OutgoingMessage) -> bytes:
    """The ``msg`` hash's value: ``b"<len(id)>:<id><body>"``."""
    ident = message.id.encode()
    return b"%d:%b%b" % (len(ident), ident, message.body)


def split_record(record: bytes) -> tuple[str, bytes]:
    """``b"<len(id)>:<id><body>"`` -> (id, body)."""
    colon = record.index(b":")
    start = colon + 1
    end = start + int(record[:colon])
    return record[start:end].decode(), record[end:]


def parse_dead_entry(entry: bytes, queue: str) -> DeadLetter:
    """One dead-list entry, ``"<ms>:<len(reason)>:<reason><record>"`` -> its DeadLetter."""
    first = entry.index(b":")
    second = entry.index(b":", first + 1)
    start = second + 1
    end = start + int(entry[first + 1 : second])
    message_id, body = split_record(entry[end:])
    reason = entry[start:end].decode(errors="replace")
    return DeadLetter(message_id, queue, body, reason, int(entry[:first]) / 1000)
