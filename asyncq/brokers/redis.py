"""Redis broker: at-least-once delivery with leases, delays and priorities.

One server (``redis://``, ``rediss://``), a Redis Cluster (``redis+cluster://``,
``rediss+cluster://`` or ``?cluster=true``) or a Sentinel-managed master
(``redis+sentinel://``); :class:`asyncq._redis.Client` hides the difference.

Key layout per queue (``{q}`` is a Redis Cluster hash tag, so one queue's keys share a slot
and every script touches a single slot)::

    <prefix>:{q}:ready:0 .. ready:9  list    handles waiting, one list per priority (9 first)
    <prefix>:{q}:delayed             zset    handle -> eta (ms, Redis clock); never leased
    <prefix>:{q}:inflight            zset    handle -> lease deadline (ms, Redis clock)
    <prefix>:{q}:msg                 hash    handle -> "<len(id)>:<id><body>"
    <prefix>:{q}:count               hash    handle -> delivery count (HINCRBY at each claim)
    <prefix>:{q}:wake                list    at most one wake-up token, BLPOPed by idle consumers
    <prefix>:{q}:dead                list    "<ms>:<len(reason)>:<reason><len(id)>:<id><body>"

A *handle* is the priority digit and 96 random bits made by the publisher
("3" + 24 hex digits): unique per publish (so a re-published id never collides with a live
copy, even after Redis lost writes), the same when one publish is retried (so the retry
stores nothing twice), and it carries its priority wherever it goes (delayed -> ready,
expired lease -> ready).

Every state change is one Lua script, so each is atomic with respect to every other client:
``claim`` moves due delayed messages to ready, returns expired leases to ready, pops up to
N handles in priority order and leases them; ``renew`` (the heartbeat, every
visibility_timeout/3) extends the leases a live consumer holds, fenced by delivery count so a
stale holder cannot extend someone else's lease; ``ack``, ``nack``, ``dead``, ``release`` settle.
All deadlines use the Redis server's clock (TIME inside the scripts), the one clock every
consumer shares. See docs/brokers/redis.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from asyncq._redis import (
    CLIENT_ERRORS,
    Client,
    GroupCommit,
    MasterSwitchedError,
    Option,
    ResponseError,
    Script,
    pack_commands,
    parse_options,
    retry_pause,
    script_call,
    translate_error,
)
from asyncq._utils import describe_error, redact_url
from asyncq.brokers import _redis_dead
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Driver options (keyword arguments or URL query), documented in one place.
OPTIONS: Final[dict[str, Option]] = {
    "key_prefix": Option(str, "asyncq", "first part of every key; the queue name follows as a hash tag"),
    "visibility_timeout": Option(
        float, 30.0, "seconds a taken message stays leased without a heartbeat before it is redelivered"
    ),
    "poll_interval": Option(
        float, 1.0, "longest an idle consumer blocks before re-checking on its own (wake-ups end it sooner)"
    ),
    "batch_size": Option(int, 500, "most messages one claim or one publish script handles (1-1000)"),
    "retry_timeout": Option(
        float, 10.0, "seconds publish/ack/admin calls keep reconnecting before BrokerConnectionError"
    ),
    "dead_letter_limit": Option(int, 10_000, "dead letters kept per queue, newest kept; 0 keeps all"),
}

#: Most due or expired messages one claim moves; the next claim moves the rest.
_MOVE_LIMIT: Final = 1000
#: Most handles per ack / renew / release script call (Lua's unpack() has a stack limit).
_CHUNK: Final = 1000
_PRIORITY_DIGITS: Final = tuple(str(p).encode() for p in range(10))

# KEYS, in every script: 1..10 ready lists (priority 0..9), 11 delayed, 12 inflight, 13 msg,
# 14 count, 15 wake, 16 dead, 17 owner (handle -> the claiming broker's owner id; see _RECLAIM).
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ready_key(h)
  return KEYS[tonumber(string.sub(h, 1, 1)) + 1]
end
local function wake()
  if redis.call('LLEN', KEYS[15]) == 0 then redis.call('RPUSH', KEYS[15], 1) end
end
local function earliest(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return nil
end
"""

# ARGV: n, then per message: handle (priority digit first), eta ms (0 = now), record.
# A handle already stored is skipped: a publish retried after its reply was lost (same
# handles) stores nothing twice. Only a delayed message needs the clock or the delayed set.
_PUBLISH = Script.build(
    "publish",
    _PRELUDE
    + """
local n = tonumber(ARGV[1])
local new = {}
if n == 1 then
  if redis.call('HSETNX', KEYS[13], ARGV[2], ARGV[4]) == 1 then new[1] = 0 end
else
  local handles = {}
  for i = 0, n - 1 do handles[i + 1] = ARGV[2 + 3 * i] end
  local stored = redis.call('HMGET', KEYS[13], unpack(handles))
  local fields = {}
  for i = 0, n - 1 do
    if not stored[i + 1] then
      new[#new + 1] = i
      fields[#fields + 1] = ARGV[2 + 3 * i]
      fields[#fields + 1] = ARGV[4 + 3 * i]
    end
  end
  if #fields > 0 then redis.call('HSET', KEYS[13], unpack(fields)) end
end
local now, before, soonest = nil, false, nil
local lists = {}
for j = 1, #new do
  local i = new[j]
  local h = ARGV[2 + 3 * i]
  local eta = tonumber(ARGV[3 + 3 * i])
  if eta > 0 and now == nil then now = now_ms() end
  if eta > 0 and eta > now then
    if before == false then before = earliest(KEYS[11]) end
    redis.call('ZADD', KEYS[11], eta, h)
    if soonest == nil or eta < soonest then soonest = eta end
  else
    local p = string.sub(h, 1, 1)
    local l = lists[p]
    if l == nil then l = {}; lists[p] = l end
    l[#l + 1] = h
  end
end
local ready = false
for p, l in pairs(lists) do
  redis.call('RPUSH', KEYS[tonumber(p) + 1], unpack(l))
  ready = true
end
-- Wake an idle consumer for new ready work, or for a delayed message due before the one it sleeps for.
if ready or (soonest and (before == nil or soonest < before)) then wake() end
return #new
""",
)

# ARGV: most to take, visibility ms, move limit, owner id.
# Returns {handle, record, count, ...; ms until the next eta or lease deadline (-1: none)}.
_CLAIM = Script.build(
    "claim",
    _PRELUDE
    + """
local now = now_ms()
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  for i = 1, #due do redis.call('RPUSH', ready_key(due[i]), due[i]) end
  redis.call('ZREM', KEYS[11], unpack(due))
end
-- Leases whose holder stopped renewing (it died): back to the head of their queue, oldest first.
local expired = redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', now, 'LIMIT', 0, limit)
if #expired > 0 then
  for i = #expired, 1, -1 do redis.call('LPUSH', ready_key(expired[i]), expired[i]) end
  redis.call('ZREM', KEYS[12], unpack(expired))
end
local want = tonumber(ARGV[1])
local taken = {}
for k = 10, 1, -1 do
  local got = redis.call('LPOP', KEYS[k], want - #taken)
  if got then
    for i = 1, #got do taken[#taken + 1] = got[i] end
    if #taken >= want then break end
  end
end
local out = {}
if #taken > 0 then
  local recs = redis.call('HMGET', KEYS[13], unpack(taken))
  local deadline = now + tonumber(ARGV[2])
  local lease = {}
  local owners = {}
  for i = 1, #taken do
    local h = taken[i]
    if recs[i] then
      out[#out + 1] = h
      out[#out + 1] = recs[i]
      out[#out + 1] = redis.call('HINCRBY', KEYS[14], h, 1)
      lease[#lease + 1] = deadline
      lease[#lease + 1] = h
      owners[#owners + 1] = h
      owners[#owners + 1] = ARGV[4]
    else
      -- Acked (or dead-lettered) by a holder whose lease had expired: already done.
      redis.call('HDEL', KEYS[14], h)
    end
  end
  if #lease > 0 then
    redis.call('ZADD', KEYS[12], unpack(lease))
    redis.call('HSET', KEYS[17], unpack(owners))
  end
end
local more = false
for k = 1, 10 do
  if redis.call('LLEN', KEYS[k]) > 0 then more = true; break end
end
if more then
  wake()  -- pass the baton: another idle consumer takes what this one left
elseif #taken < want then
  redis.call('DEL', KEYS[15])  -- drained: tokens would only cause empty wake-ups
end
local hint = -1
local d = earliest(KEYS[11])
if d then hint = d - now end
local l = earliest(KEYS[12])
if l and (hint < 0 or l - now < hint) then hint = l - now end
if hint < -1 then hint = 0 end
out[#out + 1] = hint
return out
""",
)

# ARGV: visibility ms, then pairs: handle, delivery count. Returns the handles no longer held.
_RENEW = Script.build(
    "renew",
    _PRELUDE
    + """
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[14], h) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[12], h) then
    redis.call('ZADD', KEYS[12], 'XX', deadline, h)
  else
    lost[#lost + 1] = h
  end
end
return lost
""",
)

# ARGV: handles. Unconditional: once any holder acks, the message is done.
_ACK = Script.build(
    "ack",
    """
redis.call('ZREM', KEYS[12], unpack(ARGV))
redis.call('HDEL', KEYS[13], unpack(ARGV))
redis.call('HDEL', KEYS[14], unpack(ARGV))
redis.call('HDEL', KEYS[17], unpack(ARGV))
return #ARGV
""",
)

# ARGV: handle, delivery count, delay ms. Only the current lease holder may return a message.
_NACK = Script.build(
    "nack",
    _PRELUDE
    + """
local h = ARGV[1]
if redis.call('HGET', KEYS[14], h) ~= ARGV[2] or redis.call('ZREM', KEYS[12], h) == 0 then return 0 end
redis.call('HDEL', KEYS[17], h)
local delay = tonumber(ARGV[3])
if delay > 0 then
  local eta = now_ms() + delay
  local before = earliest(KEYS[11])
  redis.call('ZADD', KEYS[11], eta, h)
  if before == nil or eta < before then wake() end
else
  redis.call('LPUSH', ready_key(h), h)
  wake()
end
return 1
""",
)

# ARGV: pairs handle, delivery count, newest first. Returns taken-but-never-yielded messages
# to the head of their queue and takes back the delivery count the claim added.
_RELEASE = Script.build(
    "release",
    _PRELUDE
    + """
local n = 0
for i = 1, #ARGV, 2 do
  local h = ARGV[i]
  if redis.call('HGET', KEYS[14], h) == ARGV[i + 1] and redis.call('ZREM', KEYS[12], h) == 1 then
    redis.call('LPUSH', ready_key(h), h)
    redis.call('HDEL', KEYS[17], h)
    if ARGV[i + 1] == '1' then redis.call('HDEL', KEYS[14], h) else redis.call('HINCRBY', KEYS[14], h, -1) end
    n = n + 1
  end
end
if n > 0 then wake() end
return n
""",
)

# ARGV: handle, reason, keep (0 = all). Unconditional, like ack.
_DEAD = Script.build(
    "dead",
    _PRELUDE
    + """
local h = ARGV[1]
local rec = redis.call('HGET', KEYS[13], h)
if not rec then return 0 end
local stamp = string.format('%d', now_ms())
redis.call('RPUSH', KEYS[16], stamp .. ':' .. string.len(ARGV[2]) .. ':' .. ARGV[2] .. rec)
local keep = tonumber(ARGV[3])
if keep > 0 then redis.call('LTRIM', KEYS[16], -keep, -1) end
redis.call('HDEL', KEYS[13], h)
redis.call('ZREM', KEYS[12], h)
redis.call('HDEL', KEYS[14], h)
redis.call('HDEL', KEYS[17], h)
return 1
""",
)

# Expired leases count as waiting: their holder is gone and the next claim takes them back.
_LENGTH = Script.build(
    "length",
    _PRELUDE
    + """
local n = redis.call('ZCARD', KEYS[11]) + redis.call('ZCOUNT', KEYS[12], '-inf', now_ms())
for k = 1, 10 do n = n + redis.call('LLEN', KEYS[k]) end
return n
""",
)

# ARGV: most to drop. Returns {handles seen, messages dropped}; the caller loops while full.
# Live leases stay; expired ones (their holder is gone) are waiting messages and go too.
_PURGE = Script.build(
    "purge",
    _PRELUDE
    + """
local chunk = tonumber(ARGV[1])
local seen, dropped = 0, 0
local function drop(hs)
  seen = seen + #hs
  dropped = dropped + redis.call('HDEL', KEYS[13], unpack(hs))
  redis.call('HDEL', KEYS[14], unpack(hs))
  redis.call('HDEL', KEYS[17], unpack(hs))
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', now_ms(), 'LIMIT', 0, chunk)
if #expired > 0 then
  redis.call('ZREM', KEYS[12], unpack(expired))
  drop(expired)
end
for k = 1, 10 do
  if seen >= chunk then break end
  local hs = redis.call('LPOP', KEYS[k], chunk - seen)
  if hs then drop(hs) end
end
if seen < chunk then
  local hs = redis.call('ZRANGE', KEYS[11], 0, chunk - seen - 1)
  if #hs > 0 then
    redis.call('ZREM', KEYS[11], unpack(hs))
    drop(hs)
  end
end
return {seen, dropped}
""",
)

# ARGV: a dead owner's id. Its leases end now (the next claim takes the messages back, first
# in their queue); a lease taken since by someone else has another owner and is left alone.
_RECLAIM = Script.build(
    "reclaim",
    _PRELUDE
    + """
local n = 0
local flat = redis.call('HGETALL', KEYS[17])
for i = 1, #flat, 2 do
  local h = flat[i]
  if flat[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[17], h)
    if redis.call('ZSCORE', KEYS[12], h) then
      redis.call('ZADD', KEYS[12], 'XX', 0, h)
      n = n + 1
    end
  end
end
if n > 0 then wake() end
return n
""",
)

_SCRIPTS: Final = (_PUBLISH, _CLAIM, _RENEW, _ACK, _NACK, _RELEASE, _DEAD, _LENGTH, _PURGE, _RECLAIM)


class _Queue:
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


def _split_record(record: bytes) -> tuple[str, bytes]:
    """``b"<len(id)>:<id><body>"`` -> (id, body)."""
    colon = record.index(b":")
    start = colon + 1
    end = start + int(record[:colon])
    return record[start:end].decode(), record[end:]


def _closed() -> BrokerError:
    return BrokerError("the broker was closed before this call was applied")


def _token() -> bytes:
    # 96 random bits: unique per publish, across producers and across Redis losing writes.
    # (random reseeds itself in a forked child, so worker processes draw their own.)
    return b"%024x" % random.getrandbits(96)


def _pack_record(message: OutgoingMessage) -> bytes:
    ident = message.id.encode()
    return b"%d:%b%b" % (len(ident), ident, message.body)


_OPEN, _SETTLING, _SETTLED = 0, 1, 2


class _RedisDelivery:
    """A leased message; settling it releases its prefetch slot and stops its lease renewals."""

    __slots__ = (
        "_broker",
        "_consumer",
        "_handle",
        "_queue",
        "_state",
        "body",
        "delivery_count",
        "id",
        "queue",
    )

    def __init__(
        self,
        broker: RedisBroker,
        consumer: _Consumer | None,
        queue: _Queue,
        handle: bytes,
        record: bytes,
        count: int,
    ) -> None:
        self._broker, self._consumer, self._queue, self._handle = broker, consumer, queue, handle
        self.id, self.body = _split_record(record)
        self.queue = queue.name
        self.delivery_count = count
        self._state = _OPEN

    def __repr__(self) -> str:
        return f"<RedisDelivery {self.queue}/{self.id} count={self.delivery_count}>"

    def _begin(self) -> None:
        if self._state != _OPEN:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._state = _SETTLING
        self._detach()

    def _detach(self) -> None:
        """Stop renewing the lease and free the consumer's prefetch slot (once)."""
        self._broker._held.get(self._queue, {}).pop(self._handle, None)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.settled()

    def _finish(self, ok: bool) -> None:
        # After a failure the delivery may be settled again; its lease is no longer renewed,
        # so if nobody settles it, it is redelivered after the visibility timeout.
        self._state = _SETTLED if ok else _OPEN

    async def ack(self) -> None:
        self._begin()
        ok = False
        try:
            await self._broker._acks.submit((self._queue, self._handle))
            ok = True
        finally:
            self._finish(ok)

    async def nack(self, *, delay: float | None = None) -> None:
        self._begin()
        delay_ms = max(0, math.ceil((delay or 0) * 1000))
        ok = False
        try:
            done = await self._broker._run(
                "nack", _NACK, self._queue, (self._handle, self.delivery_count, delay_ms)
            )
            if not done:
                logger.warning("nack of %s/%s ignored: its lease had expired", self.queue, self.id)
            ok = True
        finally:
            self._finish(ok)

    async def dead_letter(self, reason: str) -> None:
        self._begin()
        ok = False
        try:
            args = (self._handle, reason, self._broker._dead_letter_limit)
            await self._broker._run("dead_letter", _DEAD, self._queue, args)
            ok = True
        finally:
            self._finish(ok)


class _Consumer:
    """One ``consume()`` iterator: a fetch task keeps a buffer filled within the prefetch bound.

    Fetching runs ahead of the caller (the next claim overlaps the caller's work), but the
    buffer plus the yielded-and-unsettled deliveries never exceed ``prefetch``.
    """

    def __init__(self, broker: RedisBroker, queues: list[_Queue], prefetch: int) -> None:
        self._broker = broker
        self._queues = queues
        self._prefetch = prefetch
        self._batch = min(prefetch, broker._batch_size)
        # Refill ahead only once a worthwhile batch is free; an empty buffer refills at once.
        self._refill_at = max(1, self._batch // 2)
        self._unsettled = 0
        self._buffer: deque[_RedisDelivery] = deque()
        self._has_items = asyncio.Event()
        self._room = asyncio.Event()
        self._fetcher_idle = False
        self._failure: BaseException | None = None
        self._rotation = 0
        self._blockers: dict[int, _Blocker] = {}  # by hash slot (one, 0, outside a Cluster)
        # Checked at every step as well as cancelling the task: a cancellation can be lost in
        # a client library (see asyncq._redis.Client), a flag cannot.
        self._closing = False
        self._task = asyncio.create_task(self._fetch_loop(), name="asyncq.redis.fetch")

    def _may_fetch(self) -> bool:
        free = self._prefetch - self._unsettled
        return free > 0 and (not self._buffer or free >= self._refill_at)

    def settled(self) -> None:
        self._unsettled -= 1
        if self._fetcher_idle and self._may_fetch():
            self._room.set()

    def fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._has_items.set()

    async def next(self) -> _RedisDelivery:
        while not self._buffer:
            if self._failure is not None:
                raise self._failure
            self._has_items.clear()
            if self._fetcher_idle and self._may_fetch():
                self._room.set()
            await self._has_items.wait()
        delivery = self._buffer.popleft()
        if not self._buffer and self._fetcher_idle and self._may_fetch():
            self._room.set()
        return delivery

    async def _fetch_loop(self) -> None:
        names = [q.name for q in self._queues]
        logger.debug("consumer of %s started (prefetch %d)", names, self._prefetch)
        try:
            await self._fetch_forever()
        except asyncio.CancelledError:
            logger.debug("consumer of %s stopped", names)
            raise
        except BaseException as exc:  # a bug, not an outage: end the iterator loudly
            logger.exception("Redis consumer of %s stopped", [q.name for q in self._queues])
            self.fail(BrokerError(f"the Redis consumer stopped: {exc!r}"))
            raise

    async def _fetch_forever(self) -> None:
        failures = 0
        # (taken, hint, asked for) of the claim sent along with the last wait (see _block), if it ran.
        claimed: tuple[int, int, int] | None = None
        while not self._closing:
            while not self._may_fetch() and not self._closing:
                self._room.clear()
                self._fetcher_idle = True
                try:
                    await self._room.wait()
                finally:
                    self._fetcher_idle = False
            if self._closing:
                return
            want = min(self._prefetch - self._unsettled, self._batch)
            try:
                if claimed is None:
                    async with asyncio.timeout(self._broker._client().command_timeout):
                        got, hint_ms = await self._claim(want)
                else:
                    (got, hint_ms, want), claimed = claimed, None
                if got < want and hint_ms != 0 and not self._closing:  # drained: wait for work
                    wait = (
                        self._broker._poll_interval
                        if hint_ms < 0
                        else min(self._broker._poll_interval, hint_ms / 1000)
                    )
                    room = min(self._prefetch - self._unsettled, self._batch)
                    taken = await self._block(wait, room)
                    if taken is not None:
                        claimed = (*taken, room)
            except CLIENT_ERRORS as exc:
                claimed = None
                self._broker._client().failed(exc)
                pause = retry_pause(failures)
                error = translate_error(exc, "consume", BrokerConnectionError, BrokerError)
                # The first failure of an outage is a warning, later ones are kept out of the way;
                # the loop never gives up: a worker outlives a Redis restart.
                log = logger.warning if failures == 0 else logger.debug
                log("consume from %s: %s; retrying in %.2fs", [q.name for q in self._queues], error, pause)
                failures += 1
                await asyncio.sleep(pause)
                continue
            if failures:
                logger.info("consume from %s: Redis reachable again", [q.name for q in self._queues])
                failures = 0

    async def _claim(self, want: int) -> tuple[int, int]:
        """Claim up to ``want`` across the queues, starting at a rotating one (no queue is preferred)."""
        broker = self._broker
        client = broker._client()
        count = len(self._queues)
        start = self._rotation
        self._rotation = (start + 1) % count
        got, hint = 0, -1
        for i in range(count):
            queue = self._queues[(start + i) % count]
            reply = await client.eval(
                _CLAIM, queue.keys, (want - got, broker._visibility_ms, _MOVE_LIMIT, broker._owner), _SCRIPTS
            )
            claimed, queue_hint = self._taken(queue, reply)
            got += claimed
            if queue_hint >= 0 and (hint < 0 or queue_hint < hint):
                hint = queue_hint
            if got >= want:
                break
        return got, hint

    def _taken(self, queue: _Queue, reply: list[Any]) -> tuple[int, int]:
        """Buffer the deliveries of one claim's reply; return how many, and its hint (ms)."""
        broker = self._broker
        held = broker._held.setdefault(queue, {})
        last = len(reply) - 1
        for j in range(0, last, 3):
            delivery = _RedisDelivery(broker, self, queue, reply[j], reply[j + 1], reply[j + 2])
            held[delivery._handle] = delivery
            self._buffer.append(delivery)
        claimed = last // 3
        if claimed:
            self._unsettled += claimed
            self._has_items.set()
            broker._start_heartbeat()
        return claimed, int(reply[last])

    async def _block(self, seconds: float, want: int) -> tuple[int, int] | None:
        """BLPOP the queues' wake lists on this consumer's own connection(s), at most ``seconds``.

        One BLPOP covers every queue on one server. On a Cluster, one BLPOP's keys must share
        a hash slot, so queues in different slots each get their own connection (to the node
        serving the slot) and the first BLPOP to return ends the wait; the others stay pending
        for the next wait (a token one of them takes meanwhile only makes that wait shorter).

        With one queue, the claim of up to ``want`` is sent right behind the BLPOP on the same
        connection: Redis runs it the moment the BLPOP returns, so a wake-up costs no second
        round trip. Returns what that claim took (as :meth:`_claim` does), or None when no
        claim ran with the wait (the caller then claims itself).
        """
        client = self._broker._client()
        wait = max(0.01, seconds)
        groups: dict[int, list[bytes]] = {}
        for queue in self._queues:
            groups.setdefault(client.slot_of(queue.wake), []).append(queue.wake)
        claim = None
        if len(self._queues) == 1:
            claim = script_call(
                _CLAIM,
                self._queues[0].keys,
                (want, self._broker._visibility_ms, _MOVE_LIMIT, self._broker._owner),
            )
        waiting: set[asyncio.Future[Any]] = set()
        for slot, keys in groups.items():
            node = client.node_of(keys[0])
            blocker = self._blockers.get(slot)
            if blocker is not None and blocker.node != node:  # a failover moved the slot
                await self._blockers.pop(slot).close()
                blocker = None
            if blocker is None:
                blocker = self._blockers[slot] = _Blocker(client.dedicated_connection(keys[0]), node)
            waiting.add(blocker.start(keys, wait, claim))
        switched = client.switched()
        if switched is not None:
            waiting.add(switched)
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        claim_reply: Any = None
        for blocker in self._blockers.values():
            error, reply = blocker.collect()
            failure = error or failure
            if reply is not None:
                claim_reply = reply
        if switched is not None and switched in done:
            await self._close_blockers()  # they may be blocked on the old master
            raise MasterSwitchedError("the Sentinel master changed")
        if failure is not None:
            raise failure
        if isinstance(claim_reply, list):  # else it did not run (NOSCRIPT: the next claim loads it)
            return self._taken(self._queues[0], claim_reply)
        return None

    async def _close_blockers(self) -> None:
        blockers = list(self._blockers.values())
        self._blockers.clear()
        for blocker in blockers:
            await blocker.close()

    async def close(self) -> None:
        """Stop fetching; return claimed-but-never-yielded messages to their queues now."""
        self._closing = True
        self._room.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        leftovers = list(self._buffer)
        self._buffer.clear()
        for delivery in leftovers:
            delivery._state = _SETTLED
            delivery._detach()
        try:
            if leftovers:
                await self._broker._release(leftovers)
        except BrokerError as exc:
            logger.warning(
                "could not return %d prefetched messages (%s); they return after the visibility timeout",
                len(leftovers),
                describe_error(exc),
            )
        finally:
            await self._close_blockers()


class _Blocker:
    """One BLPOP connection of a consumer (to ``node``) and the BLPOP in flight on it, if any."""

    __slots__ = ("conn", "node", "task")

    def __init__(self, conn: AbstractConnection, node: str) -> None:
        self.conn = conn
        self.node = node
        self.task: asyncio.Task[Any] | None = None

    def start(self, keys: list[bytes], wait: float, claim: tuple[Any, ...] | None) -> asyncio.Task[Any]:
        """The BLPOP in flight (and ``claim`` behind it), started now for at most ``wait`` s if none is."""
        if self.task is None:
            self.task = asyncio.create_task(self._blpop(keys, wait, claim), name="asyncq.redis.blpop")
        return self.task

    async def _blpop(self, keys: list[bytes], wait: float, claim: tuple[Any, ...] | None) -> Any:
        # Our own deadline on top of BLPOP's: a half-open TCP connection must not hang us.
        async with asyncio.timeout(wait + 2.0 + wait / 10):
            commands: list[tuple[Any, ...]] = [("BLPOP", *keys, f"{wait:.3f}")]
            if claim is not None:
                commands.append(claim)
            if not self.conn.is_connected:
                # Explicitly: redis-py's send_packed_command connects without asking the
                # sentinels (a Sentinel-managed connection would reach localhost:6379).
                await self.conn.connect()  # type: ignore[no-untyped-call]
            await self.conn.send_packed_command(pack_commands(commands), check_health=False)
            await self.conn.read_response(timeout=math.inf)
            if claim is None:
                return None
            try:
                return await self.conn.read_response(timeout=math.inf)
            except ResponseError:  # NOSCRIPT after a restart: the caller's own claim loads it
                return None

    def collect(self) -> tuple[BaseException | None, Any]:
        """Forget a finished BLPOP; return its error, if it failed, and its claim's reply."""
        task = self.task
        if task is None or not task.done():
            return None, None
        self.task = None
        if task.cancelled():
            return None, None
        error = task.exception()
        return error, None if error is not None else task.result()

    async def close(self) -> None:
        if self.task is not None:
            # Cancelling a read makes redis-py drop the connection: the reply cannot be matched.
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.conn.disconnect()


class RedisBroker(BrokerDefaults):
    """At-least-once queues in Redis: one server, a Cluster, or a Sentinel-managed master.

    URLs: ``redis://`` and ``rediss://`` (TLS) for one server; ``redis+cluster://host:port
    [,host:port...]`` (``rediss+cluster://``, or ``?cluster=true``) for a Cluster;
    ``redis+sentinel://host:26379[,host:port...]/<master name>[/<db>]`` for Sentinel.

    Options (keyword arguments, or the URL query; keyword arguments win):
        key_prefix: first part of every key (default ``"asyncq"``).
        visibility_timeout: seconds a taken message stays leased without a heartbeat; a live
            consumer renews every visibility_timeout/3, so only a dead (or frozen) one loses
            its messages to redelivery (default 30).
        poll_interval: longest an idle consumer blocks before looking again on its own; new
            messages, earlier etas and nacks wake it at once (default 1).
        batch_size: most messages one claim or one publish script handles, 1-1000 (default 500).
        retry_timeout: seconds publish, ack and admin calls keep reconnecting before raising
            BrokerConnectionError (default 10). Consumers retry for ever, with backoff.
        dead_letter_limit: dead letters kept per queue, oldest dropped first; 0 keeps all (10000).
        max_connections: pooled connections at most (per node on a Cluster), default 50;
            callers beyond that wait up to pool_timeout (5) seconds for one.
        min_replicas, replica_timeout: a publish returns only once this many replicas confirmed
            it, waiting at most replica_timeout (1) seconds, else it is retried (default 0:
            no wait; not on a Cluster). What a failover can lose is then never confirmed.
        sentinel_username, sentinel_password: credentials for the sentinels themselves.
        db, username, password, client_name, socket_timeout, socket_connect_timeout,
        socket_keepalive, health_check_interval, ssl_*: passed to redis-py.
    """

    capabilities = BrokerCapabilities(
        durable=True, redelivers_lost=True, notifies=True, priorities=True, delayed_delivery=True
    )

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any) -> None:
        self.url = url
        self._target, settings, self._connection = parse_options(url, options, OPTIONS, what="Redis broker")
        self._clean_url = self._target.url
        self._prefix: str = settings["key_prefix"]
        if "{" in self._prefix or "}" in self._prefix:
            # Braces would make the prefix the Cluster hash tag: every queue in one slot.
            raise ConfigurationError(f"key_prefix {self._prefix!r} must not contain braces")
        visibility: float = settings["visibility_timeout"]
        self._poll_interval: float = settings["poll_interval"]
        self._batch_size: int = settings["batch_size"]
        self._retry_timeout: float = settings["retry_timeout"]
        self._dead_letter_limit: int = settings["dead_letter_limit"]
        if visibility <= 0 or self._poll_interval <= 0 or self._retry_timeout < 0:
            raise ConfigurationError(
                "visibility_timeout and poll_interval must be > 0 and retry_timeout >= 0; got "
                f"{visibility}, {self._poll_interval}, {self._retry_timeout}"
            )
        if not 1 <= self._batch_size <= _CHUNK or self._dead_letter_limit < 0:
            raise ConfigurationError(
                f"batch_size must be 1-{_CHUNK} and dead_letter_limit >= 0; got "
                f"{self._batch_size}, {self._dead_letter_limit}"
            )
        self._visibility = visibility
        self._visibility_ms = max(1, math.ceil(visibility * 1000))
        #: Lease owner id of the messages this instance takes; also in its connections' names,
        #: so that a live worker can tell (CLIENT LIST) that this process is gone.
        self._owner = uuid.uuid4().hex
        self._new_client()  # refuses bad connection options now, not at the first connect
        self._redis: Client | None = None
        self._connect_lock = asyncio.Lock()
        self._queues: dict[str, _Queue] = {}
        self._held: dict[_Queue, dict[bytes, _RedisDelivery]] = {}
        self._consumers: set[_Consumer] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._acks: GroupCommit[tuple[_Queue, bytes], None] = GroupCommit(
            self._flush_acks, "asyncq.redis.acks", _closed
        )
        self._publishes: GroupCommit[OutgoingMessage, None] = GroupCommit(
            self._flush_publishes, "asyncq.redis.publish", _closed
        )

    def __repr__(self) -> str:
        return f"<RedisBroker {redact_url(self._clean_url)} prefix={self._prefix!r}>"

    # -- plumbing -------------------------------------------------------------------------

    def _new_client(self) -> Client:
        return Client(
            self._target,
            self._connection,
            client_name=f"asyncq-broker-{self._owner}",
            retry_timeout=self._retry_timeout,
            connection_error=BrokerConnectionError,
            error=BrokerError,
            log=logger,
        )

    def _client(self) -> Client:
        if self._redis is None:
            raise BrokerError("the Redis broker is not connected; call connect() first")
        return self._redis

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(self._prefix, name)
        return queue

    async def _ensure_connected(self) -> None:
        if self._redis is None:
            await self.connect()

    async def _retrying(self, what: str, op: Callable[[Client], Awaitable[T]]) -> T:
        client = self._client()
        return await client.retrying(what, lambda: op(client))

    async def _run(self, what: str, script: Script, queue: _Queue, args: Sequence[Any]) -> Any:
        """Run one script, retrying on connection errors (every caller's script is safe to repeat)."""
        return await self._retrying(what, lambda client: client.eval(script, queue.keys, args, _SCRIPTS))

    async def _run_many(
        self, what: str, calls: list[tuple[Any, ...]], *, replicate: bool = False
    ) -> list[Any]:
        return await self._retrying(
            what, lambda client: client.pipeline(calls, _SCRIPTS, replicate=replicate)
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection pool and load the scripts; idempotent."""
        async with self._connect_lock:
            if self._redis is not None:
                return
            client = self._new_client()
            await client.open(_SCRIPTS)
            self._redis = client

    async def aclose(self) -> None:
        """Stop consumers and the heartbeat, apply pending acks, close connections.

        Unsettled deliveries are not returned: their leases expire after the visibility
        timeout and they are redelivered (they may still be running somewhere).
        """
        for consumer in list(self._consumers):
            consumer.fail(BrokerError("the Redis broker was closed"))
            await consumer.close()
        self._consumers.clear()
        await self._acks.close()
        await self._publishes.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        self._held.clear()
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> RedisBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- publishing -----------------------------------------------------------------------

    def _publish_calls(self, messages: Sequence[OutgoingMessage]) -> list[tuple[Any, ...]]:
        by_queue: dict[str, list[OutgoingMessage]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).append(message)
        calls: list[tuple[Any, ...]] = []
        for name, queued in by_queue.items():
            keys = self._queue(name).keys
            for start in range(0, len(queued), self._batch_size):
                chunk = queued[start : start + self._batch_size]
                args: list[Any] = [len(chunk)]
                for message in chunk:
                    priority = message.priority or 0
                    args.append(_PRIORITY_DIGITS[min(9, max(0, priority))] + _token())
                    args.append(0 if message.eta is None else math.ceil(message.eta * 1000))
                    args.append(_pack_record(message))
                calls.append(script_call(_PUBLISH, keys, args))
        return calls

    async def _flush_publishes(self, messages: list[OutgoingMessage]) -> list[None]:
        # A retry after a reply was lost may store a message twice: at-least-once, documented.
        await self._run_many("publish", self._publish_calls(messages), replicate=True)
        return [None] * len(messages)

    async def publish(self, message: OutgoingMessage) -> None:
        """Store one message; concurrent publishes share round trips (group commit)."""
        await self._ensure_connected()
        await self._publishes.submit(message)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store several messages in one pipelined round trip (one script call per batch_size per queue)."""
        if messages:
            await self._ensure_connected()
            await self._run_many("publish_many", self._publish_calls(messages), replicate=True)

    # -- consuming ------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues``; at most ``prefetch`` claimed and unsettled at a time."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if not queues:
            raise ValueError("consume() needs at least one queue")
        await self._ensure_connected()
        consumer = _Consumer(self, [self._queue(name) for name in dict.fromkeys(queues)], prefetch)
        self._consumers.add(consumer)
        try:
            while True:
                yield await consumer.next()
        finally:
            self._consumers.discard(consumer)
            await consumer.close()

    async def _release(self, deliveries: list[_RedisDelivery]) -> None:
        by_queue: dict[_Queue, list[Any]] = {}
        for delivery in reversed(deliveries):  # LPUSHed one by one: newest first keeps the order
            by_queue.setdefault(delivery._queue, []).extend((delivery._handle, delivery.delivery_count))
        calls = [
            script_call(_RELEASE, queue.keys, args[i : i + 2 * _CHUNK])
            for queue, args in by_queue.items()
            for i in range(0, len(args), 2 * _CHUNK)
        ]
        # One bounded attempt: if it fails the messages come back when their leases expire,
        # which is no reason to hold up closing the iterator.
        client = self._client()
        await client.once("return prefetched messages", lambda: client.pipeline(calls, _SCRIPTS))

    async def _flush_acks(self, items: list[tuple[_Queue, bytes]]) -> list[None]:
        by_queue: dict[_Queue, list[bytes]] = {}
        for queue, handle in items:
            by_queue.setdefault(queue, []).append(handle)
        calls = [
            script_call(_ACK, queue.keys, handles[i : i + _CHUNK])
            for queue, handles in by_queue.items()
            for i in range(0, len(handles), _CHUNK)
        ]
        await self._run_many("ack", calls)  # idempotent, so retrying is safe
        return [None] * len(items)

    # -- lease renewal ----------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="asyncq.redis.heartbeat")

    async def _heartbeat_loop(self) -> None:
        interval = self._visibility / 3
        logger.debug("lease heartbeat started (every %.2fs)", interval)
        try:
            while True:
                await asyncio.sleep(interval)
                started = time.monotonic()
                try:
                    # Bounded: a renewal that cannot finish within its interval is already late.
                    async with asyncio.timeout(max(interval, 1.0)):
                        await self._renew()
                except (BrokerError, TimeoutError) as exc:
                    logger.warning(
                        "lease renewal failed (%s); retrying in %.2fs", describe_error(exc), interval
                    )
                else:
                    logger.debug("renewed leases in %.1f ms", (time.monotonic() - started) * 1000)
        finally:
            logger.debug("lease heartbeat stopped")

    async def _renew(self) -> None:
        calls: list[tuple[Any, ...]] = []
        queues: list[_Queue] = []
        for queue, held in self._held.items():
            items = list(held.values())
            for i in range(0, len(items), _CHUNK):
                args: list[Any] = [self._visibility_ms]
                for delivery in items[i : i + _CHUNK]:
                    args += (delivery._handle, delivery.delivery_count)
                calls.append(script_call(_RENEW, queue.keys, args))
                queues.append(queue)
        if not calls:
            return
        client = self._client()
        replies = await client.once("renew leases", lambda: client.pipeline(calls, _SCRIPTS))
        for queue, lost in zip(queues, replies, strict=True):
            for handle in lost:
                lost_delivery = self._held.get(queue, {}).pop(handle, None)
                if lost_delivery is not None:
                    logger.warning(
                        "lease on %s/%s expired before it was renewed (was the event loop blocked longer "
                        "than visibility_timeout=%ss?); it may run twice",
                        queue.name,
                        lost_delivery.id,
                        self._visibility,
                    )

    # -- administration ---------------------------------------------------------------------

    async def release_owner(self, owner: str, queues: Sequence[str]) -> int:
        """End now the leases that broker instance ``owner`` (a dead process) holds in ``queues``.

        Their messages go back to the head of their queues; return how many.
        """
        await self._ensure_connected()
        released = 0
        for name in queues:
            released += int(await self._run("release dead leases", _RECLAIM, self._queue(name), (owner,)))
        return released

    async def purge(self, queue: str) -> int:
        """Drop the waiting (ready and delayed) messages of ``queue``; in-flight ones stay."""
        await self._ensure_connected()
        keys = self._queue(queue)
        total = 0
        while True:
            seen, dropped = await self._run("purge", _PURGE, keys, (_CHUNK,))
            total += dropped
            if seen < _CHUNK:
                return int(total)

    async def queue_length(self, queue: str) -> int:
        """Ready plus delayed messages of ``queue`` (in-flight ones are not waiting)."""
        await self._ensure_connected()
        return int(await self._run("queue_length", _LENGTH, self._queue(queue), ()))

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, oldest first."""
        if limit <= 0:
            return []
        await self._ensure_connected()
        key = self._queue(queue).dead
        entries: list[bytes] = await self._retrying(
            "dead_letters", lambda client: client.execute("LRANGE", key, 0, limit - 1)
        )
        letters = []
        for entry in entries:
            first = entry.index(b":")
            second = entry.index(b":", first + 1)
            start = second + 1
            end = start + int(entry[first + 1 : second])
            message_id, body = _split_record(entry[end:])
            reason = entry[start:end].decode(errors="replace")
            letters.append(DeadLetter(message_id, queue, body, reason, int(entry[:first]) / 1000))
        return letters

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """The oldest dead letter of ``queue`` with this id, or None."""
        await self._ensure_connected()
        found = await _redis_dead.find(self._retrying, self._queue(queue).keys, queue, message_id)
        return None if found is None else found[1]

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        """Move the oldest dead letter with this id back to ``queue`` (priority 0, no deliveries)."""
        await self._ensure_connected()
        return await _redis_dead.requeue_one(self._retrying, self._queue(queue).keys, queue, message_id)

    async def requeue_dead_letters(self, queue: str) -> int:
        """Move every dead letter of ``queue`` back to it; return how many."""
        await self._ensure_connected()
        return await _redis_dead.requeue_all(self._retrying, self._queue(queue).keys)

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop the dead letters of ``queue``; return how many."""
        await self._ensure_connected()
        return await _redis_dead.purge(self._retrying, self._queue(queue).keys)
