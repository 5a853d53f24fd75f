"""Dead-letter administration for the Redis broker: find one, requeue one or all, purge.

A queue's dead list (``<prefix>:{q}:dead``, see asyncq/brokers/redis.py) holds entries
``"<ms>:<len(reason)>:<reason><record>"``, where the record is the message as the ``msg`` hash
stored it. A requeue moves the record back under a new handle: a new message, ready at once,
with no delivery count. The dead list keeps no priority, so requeued messages get 0.

Each change is one Lua script on the queue's own keys (one hash slot), called with handles
made here, so a call retried after its reply was lost finds its own work done.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from asyncq._redis import Client, Script
from asyncq.brokers.base import DeadLetter

__all__ = ["DEAD_SCRIPTS", "find", "parse_entry", "purge", "requeue_all", "requeue_one"]

#: Entries read per LRANGE while searching, and dead letters moved per requeue-all script.
CHUNK: Final = 1000

# KEYS as in redis.py: 1..10 ready lists (priority 0..9), 11 delayed, 12 inflight, 13 msg,
# 14 count, 15 wake, 16 dead. Handles made here start with "0": the priority-0 list, KEYS[1].
_MOVE = """
local function move(e, h)
  local c1 = string.find(e, ':', 1, true)
  local c2 = string.find(e, ':', c1 + 1, true)
  redis.call('HSET', KEYS[13], h, string.sub(e, c2 + 1 + tonumber(string.sub(e, c1 + 1, c2 - 1))))
  redis.call('RPUSH', KEYS[1], h)
end
local function wake()
  if redis.call('LLEN', KEYS[15]) == 0 then redis.call('RPUSH', KEYS[15], 1) end
end
"""

# ARGV: the exact entry, a new handle. 1 if moved (or moved by an earlier try of this call).
_REQUEUE_ONE = Script.build(
    "dead_requeue_one",
    _MOVE
    + """
if redis.call('HEXISTS', KEYS[13], ARGV[2]) == 1 then return 1 end
if redis.call('LREM', KEYS[16], 1, ARGV[1]) == 0 then return 0 end
move(ARGV[1], ARGV[2])
wake()
return 1
""",
)

# ARGV: new handles, one per dead letter to move from the head of the list. Returns how many moved.
_REQUEUE_ALL = Script.build(
    "dead_requeue_all",
    _MOVE
    + """
if redis.call('HEXISTS', KEYS[13], ARGV[1]) == 1 then
  local done = 0
  for i = 1, #ARGV do done = done + redis.call('HEXISTS', KEYS[13], ARGV[i]) end
  return done
end
local n = 0
for i = 1, #ARGV do
  local e = redis.call('LPOP', KEYS[16])
  if not e then break end
  move(e, ARGV[i])
  n = n + 1
end
if n > 0 then wake() end
return n
""",
)

_PURGE = Script.build(
    "dead_purge",
    """
local n = redis.call('LLEN', KEYS[16])
redis.call('DEL', KEYS[16])
return n
""",
)

DEAD_SCRIPTS: Final = (_REQUEUE_ONE, _REQUEUE_ALL, _PURGE)

#: ``broker._retrying``: run an idempotent operation on the client, riding out reconnects.
Retrying = Callable[[str, Callable[[Client], Awaitable[Any]]], Awaitable[Any]]


def _handle() -> bytes:
    return b"0%024x" % random.getrandbits(96)


def parse_entry(entry: bytes, queue: str) -> DeadLetter:
    """One dead-list entry -> its DeadLetter."""
    first = entry.index(b":")
    second = entry.index(b":", first + 1)
    start = second + 1
    end = start + int(entry[first + 1 : second])
    record = entry[end:]
    colon = record.index(b":")
    id_end = colon + 1 + int(record[:colon])
    return DeadLetter(
        id=record[colon + 1 : id_end].decode(),
        queue=queue,
        body=record[id_end:],
        reason=entry[start:end].decode(errors="replace"),
        dead_lettered_at=int(entry[:first]) / 1000,
    )


async def find(
    retrying: Retrying, keys: tuple[bytes, ...], queue: str, message_id: str
) -> tuple[bytes, DeadLetter] | None:
    """The oldest entry of the dead list with this message id, raw and parsed."""
    wanted = b"%d:%b" % (len(message_id.encode()), message_id.encode())
    start = 0
    while True:
        entries: list[bytes] = await retrying(
            "find a dead letter",
            lambda client, s=start: client.execute("LRANGE", keys[15], s, s + CHUNK - 1),  # type: ignore[misc]
        )
        for entry in entries:
            if wanted in entry:  # cheap filter; the parse decides
                letter = parse_entry(entry, queue)
                if letter.id == message_id:
                    return entry, letter
        if len(entries) < CHUNK:
            return None
        start += CHUNK


def _eval(script: Script, keys: tuple[bytes, ...], args: list[Any]) -> Callable[[Client], Awaitable[Any]]:
    return lambda client: client.eval(script, keys, args, DEAD_SCRIPTS)


async def requeue_one(retrying: Retrying, keys: tuple[bytes, ...], queue: str, message_id: str) -> bool:
    """Requeue the oldest dead letter with ``message_id``; False if there is none."""
    for _ in range(3):  # an entry trimmed or requeued by someone else meanwhile: look again
        found = await find(retrying, keys, queue, message_id)
        if found is None:
            return False
        moved = await retrying("requeue a dead letter", _eval(_REQUEUE_ONE, keys, [found[0], _handle()]))
        if moved:
            return True
    return False


async def requeue_all(retrying: Retrying, keys: tuple[bytes, ...]) -> int:
    """Requeue every dead letter, CHUNK per script call; return how many moved."""
    total = 0
    while True:
        handles = [_handle() for _ in range(CHUNK)]
        moved = int(await retrying("requeue dead letters", _eval(_REQUEUE_ALL, keys, handles)))
        total += moved
        if moved < CHUNK:
            return total


async def purge(retrying: Retrying, keys: tuple[bytes, ...]) -> int:
    """Drop the dead list; return how many entries it had."""
    return int(await retrying("purge dead letters", _eval(_PURGE, keys, [])))
