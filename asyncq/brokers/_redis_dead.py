"""Dead-letter administration for the Redis broker: find one, requeue one or all, purge.

A queue's dead list (``<prefix>:{q}:dead``, see asyncq/brokers/_redis_scripts.py) holds
entries ``"<ms>:<len(reason)>:<reason><record>"``, where the record is the message as the
``msg`` hash stored it. A requeue moves the record back under a new handle: a new message, ready at once,
with no delivery count. The dead list keeps no priority, so requeued messages get 0.

Each change is one Lua script (``redis_lua/dead_*.lua``) on the queue's own keys (one hash
slot), called with handles made here, so a call retried after its reply was lost finds its
own work done.
"""

from __future__ import annotations

import random
from typing import Final

from asyncq._redis import ClientHolder
from asyncq.brokers._redis_scripts import DEAD_PURGE, DEAD_REQUEUE_ALL, DEAD_REQUEUE_ONE, parse_dead_entry
from asyncq.brokers.base import DeadLetter

__all__ = ["find", "purge", "requeue_all", "requeue_one"]

#: Entries read per LRANGE while searching, and dead letters moved per requeue-all script.
CHUNK: Final = 1000


def _handle() -> bytes:
    return b"0%024x" % random.getrandbits(96)


async def find(
    redis: ClientHolder, keys: tuple[bytes, ...], queue: str, message_id: str
) -> tuple[bytes, DeadLetter] | None:
    """The oldest entry of the dead list with this message id, raw and parsed."""
    wanted = b"%d:%b" % (len(message_id.encode()), message_id.encode())
    start = 0
    while True:
        entries: list[bytes] = await redis.retrying(
            "find a dead letter",
            lambda client, s=start: client.execute("LRANGE", keys[15], s, s + CHUNK - 1),  # type: ignore[misc]
        )
        for entry in entries:
            if wanted in entry:  # cheap filter; the parse decides
                letter = parse_dead_entry(entry, queue)
                if letter.id == message_id:
                    return entry, letter
        if len(entries) < CHUNK:
            return None
        start += CHUNK


async def requeue_one(redis: ClientHolder, keys: tuple[bytes, ...], queue: str, message_id: str) -> bool:
    """Requeue the oldest dead letter with ``message_id``; False if there is none."""
    for _ in range(3):  # an entry trimmed or requeued by someone else meanwhile: look again
        found = await find(redis, keys, queue, message_id)
        if found is None:
            return False
        moved = await redis.run("requeue a dead letter", DEAD_REQUEUE_ONE, keys, [found[0], _handle()])
        if moved:
            return True
    return False


async def requeue_all(redis: ClientHolder, keys: tuple[bytes, ...]) -> int:
    """Requeue every dead letter, CHUNK per script call; return how many moved."""
    total = 0
    while True:
        handles = [_handle() for _ in range(CHUNK)]
        moved = int(await redis.run("requeue dead letters", DEAD_REQUEUE_ALL, keys, handles))
        total += moved
        if moved < CHUNK:
            return total


async def purge(redis: ClientHolder, keys: tuple[bytes, ...]) -> int:
    """Drop the dead list; return how many entries it had."""
    return int(await redis.run("purge dead letters", DEAD_PURGE, keys, ()))
