"""kombu's Redis layout (queues, unacked hash, bindings) and Celery's Redis result keys.

What a Celery producer, worker and ``AsyncResult`` expect to find in Redis:

* a queue is a list; producers ``LPUSH`` the JSON envelope, consumers ``BRPOP`` (priority
  steps 3, 6 and 9 live in ``<queue>\\x06\\x16<step>``; with kombu, 0 is served first);
* a taken message is kept in the ``unacked`` hash (delivery tag -> ``[envelope, exchange,
  routing_key]``) and ``unacked_index`` sorted set until acked, so that kombu's visibility
  restore on any Celery worker puts it back if this process dies;
* ``_kombu.binding.<queue>`` holds ``<routing_key>\\x06\\x16\\x06\\x16<queue>`` so that
  publishing to the queue's name routes to it;
* a result is ``celery-task-meta-<id>`` (JSON meta) and is also published on a channel of
  the same name, which ``AsyncResult.get()`` subscribes to.

Every call runs under the client's socket timeout, so none waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from asyncq import exceptions
from asyncq.exceptions import BrokerError, MissingDependencyError

try:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - the redis extra is missing
    raise MissingDependencyError.for_extra("redis", "redis") from exc

__all__ = ["RESULT_PREFIX", "CeleryRedis", "Taken"]

SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
RESULT_PREFIX = "celery-task-meta-"
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
#: Seconds one BRPOP waits before checking again (well under the socket timeout).
POLL_SECONDS = 1


class Taken:
    """One envelope taken from a queue and parked in ``unacked`` until settled."""

    __slots__ = ("exchange", "queue", "raw", "routing_key", "tag")

    def __init__(self, queue: str, raw: bytes, tag: str, exchange: str, routing_key: str) -> None:
        self.queue = queue
        self.raw = raw
        self.tag = tag
        self.exchange = exchange
        self.routing_key = routing_key


def queue_keys(queue: str) -> list[str]:
    """The list keys of ``queue``, in the order kombu serves them."""
    return [queue if step == 0 else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


def _priority_key(queue: str, priority: int) -> str:
    step = min(PRIORITY_STEPS, key=lambda s: abs(s - max(0, min(9, priority))))
    return queue if step == 0 else f"{queue}{SEP}{step}"


class CeleryRedis:
    """A connection to a Redis that Celery producers/workers share; one per URL."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout + POLL_SECONDS,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )

    async def aclose(self) -> None:
        """Release the connections."""
        await self._client.aclose()

    async def _run(self, what: str, call: Any) -> Any:
        # Not asyncio.wait_for: a cancelled wait_for waits for the command to unwind, and
        # redis-py's BRPOP may not (a stopping worker would hang). The abandoned command's
        # connection is dropped by aclose().
        command = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({command}, timeout=self.timeout + POLL_SECONDS)
        except asyncio.CancelledError:
            command.cancel()
            command.add_done_callback(_retrieve)
            raise
        if not done:
            command.cancel()
            command.add_done_callback(_retrieve)
            raise BrokerError(f"Celery Redis {what} got no answer within {self.timeout + POLL_SECONDS}s")
        try:
            return command.result()
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError
            raise BrokerError(f"Celery Redis {what} failed: {exc}") from exc

    # -- queues ---------------------------------------------------------------------------------

    async def declare(self, queues: Sequence[str]) -> None:
        """Bind each queue to its own name, as kombu does when it declares a queue."""
        pipe = self._client.pipeline(transaction=False)
        for queue in queues:
            pipe.sadd(f"_kombu.binding.{queue}", f"{queue}{SEP}{SEP}{queue}")
        await self._run("declare", pipe.execute())

    async def take(self, queues: Sequence[str]) -> Taken | None:
        """Take the next envelope of ``queues`` (None after a quiet poll), parked as unacked."""
        keys = [key for queue in queues for key in queue_keys(queue)]
        popped = await self._run("BRPOP", self._client.brpop(keys, timeout=POLL_SECONDS))
        if popped is None:
            return None
        key, raw = popped
        key = key.decode() if isinstance(key, bytes) else str(key)
        queue = key.split(SEP, 1)[0]
        try:
            envelope = json.loads(raw)
            properties = envelope["properties"]
            info = properties.get("delivery_info") or {}
            tag = str(properties.get("delivery_tag") or "")
        except (ValueError, KeyError, TypeError, AttributeError):
            envelope, info, tag = None, {}, ""
        taken = Taken(queue, raw, tag, str(info.get("exchange") or ""), str(info.get("routing_key") or queue))
        if envelope is not None and tag:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(UNACKED_INDEX, {tag: time.time()})
            pipe.hset(UNACKED, tag, json.dumps([envelope, taken.exchange, taken.routing_key]))
            await self._run("park unacked", pipe.execute())
        return taken

    async def ack(self, taken: Taken) -> None:
        """Done with a taken envelope: forget it."""
        if not taken.tag:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(UNACKED_INDEX, taken.tag)
        pipe.hdel(UNACKED, taken.tag)
        await self._run("ack", pipe.execute())

    async def requeue(self, taken: Taken) -> None:
        """Put a taken envelope back at the head of its queue, marked redelivered."""
        raw: bytes | str = taken.raw
        try:
            envelope = json.loads(raw)
            envelope["headers"]["redelivered"] = True
            envelope["properties"]["delivery_info"]["redelivered"] = True
            priority = int(envelope["properties"].get("priority") or 0)
            raw = json.dumps(envelope)
        except (ValueError, KeyError, TypeError):
            priority = 0
        pipe = self._client.pipeline(transaction=True)
        pipe.rpush(_priority_key(taken.queue, priority), raw)  # the consuming end: served next
        if taken.tag:
            pipe.zrem(UNACKED_INDEX, taken.tag)
            pipe.hdel(UNACKED, taken.tag)
        await self._run("requeue", pipe.execute())

    async def publish(self, queue: str, raw: bytes, *, priority: int = 0) -> None:
        """Send an envelope to ``queue`` the way a kombu producer does."""
        await self._run("LPUSH", self._client.lpush(_priority_key(queue, priority), raw))

    # -- results --------------------------------------------------------------------------------

    async def store_result(
        self, task_id: str, meta: dict[str, Any], *, ttl: float | None, reply_to: str = ""
    ) -> None:
        """Write Celery's result record and notify the ``AsyncResult`` waiting on it (``reply_to`` unused)."""
        key = f"{RESULT_PREFIX}{task_id}"
        value = json.dumps(meta)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(key, value, ex=max(1, int(ttl)) if ttl else None)
        pipe.publish(key, value)
        await self._run("store result", pipe.execute())

    async def get_result(self, task_id: str) -> dict[str, Any] | None:
        """Celery's result record of ``task_id``, or None when there is none yet."""
        raw = await self._run("get result", self._client.get(f"{RESULT_PREFIX}{task_id}"))
        return None if raw is None else dict(json.loads(raw))

    async def wait_result(self, task_id: str, *, timeout: float | None) -> dict[str, Any]:
        """Wait until ``task_id`` is ready (SUCCESS, FAILURE or REVOKED); return its record.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        key = f"{RESULT_PREFIX}{task_id}"
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self._client.pubsub()
        try:
            await self._run("subscribe", pubsub.subscribe(key))
            while True:
                meta = await self.get_result(task_id)  # after subscribing: no notification is missed
                if meta is not None and meta.get("status") in _READY:
                    return meta
                remaining = (
                    POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
                )
                if remaining <= 0:
                    raise exceptions.TimeoutError(f"Celery task {task_id} not ready within {timeout}s")
                await self._run("wait", pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining))
        finally:
            with contextlib.suppress(RedisError, OSError):
                await asyncio.wait_for(pubsub.aclose(), self.timeout)  # type: ignore[no-untyped-call, unused-ignore]


_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def _retrieve(command: asyncio.Future[Any]) -> None:
    if not command.cancelled():
        command.exception()  # abandoned on purpose: its error is not news
