"""A task's final record and the ack of its Redis delivery, written in one round trip.

When the worker's broker and result backend are the same Redis server, the SUCCESS record
and the ack need not take a flush each: :class:`JointSettle` sends both in one pipeline on
the backend's connection, the records first. Redis runs a connection's commands in order,
so an ack is never applied before its record is stored: a crash in between re-runs the task
(at-least-once), as when they travelled apart.

Not on a Cluster (a record and its queue live in different slots) nor with min_replicas (the
record must be replicated before the ack); then the worker writes and acks apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeGuard

from asyncq._redis import ClientHolder, GroupCommit, Script, script_call
from asyncq.brokers._redis_leases import Leases, RedisDelivery, Settled, joint_flushed
from asyncq.brokers._redis_scripts import ACK, CHUNK, Queue
from asyncq.exceptions import BackendError

__all__ = ["JointSettle", "Settled"]

#: Most records, or acks, one script call carries.
_CHUNK: Final = min(500, CHUNK)


def _closed() -> BackendError:
    return BackendError("the result backend was closed before this call was applied")


class JointSettle:
    """Group commit of (final record, ack) pairs for one result backend."""

    def __init__(self, redis: ClientHolder, set_many: Script, scripts: Sequence[Script]) -> None:
        self._redis = redis
        self._set_many = set_many
        self._scripts = (*scripts, ACK)  # loaded again on the backend's connection if Redis forgot them
        self._group: GroupCommit[tuple[Any, ...], None] = GroupCommit(
            self._flush, "asyncq.redis.results-acks", _closed, joint_flushed
        )
        self._leases: Leases | None = None  # the broker's last seen, and whether it shares the server
        self._shared = False

    def submit(self, delivery: object, key: bytes, value: bytes, ttl_ms: int) -> Awaitable[None] | None:
        """Store ``value`` at ``key`` and ack ``delivery``; None if they cannot go together."""
        if not self._joins(delivery):
            return None
        return delivery.ack_along(self._group.submit, key, value, ttl_ms)

    def queue(self, delivery: object, key: bytes, value: bytes, ttl_ms: int, then: Settled) -> bool:
        """:meth:`submit` with nothing to await, behind the flush in flight: ``then`` hears the end.

        False (nothing done) when no flush is in flight or the pair cannot go together.
        """
        if not self._group.busy or not self._joins(delivery):
            return False
        delivery.ack_along(self._group.queue, key, value, ttl_ms, then)
        return True

    def _joins(self, delivery: object) -> TypeGuard[RedisDelivery]:
        if type(delivery) is not RedisDelivery or not self._redis.connected:
            return False
        leases = delivery._leases
        if leases is not self._leases:
            self._leases, self._shared = leases, self._same_server(leases)
        return self._shared

    def _same_server(self, leases: Leases) -> bool:
        mine, theirs = self._redis, leases.redis
        if mine.target != theirs.target or mine.connection != theirs.connection:
            return False
        client = mine.client()
        return not client.clustered and client.min_replicas == 0

    async def _flush(self, items: list[tuple[Any, ...]]) -> list[None]:
        keys: list[bytes] = []
        args: list[Any] = []
        handles: dict[Queue, list[bytes]] = {}
        for key, value, ttl_ms, delivery, _ in items:
            keys.append(key)
            args += (value, ttl_ms)
            queue = delivery._queue
            of_queue = handles.get(queue)
            if of_queue is None:
                handles[queue] = [delivery._handle]
            else:
                of_queue.append(delivery._handle)
        # Every record before any ack (one connection, run in order).
        commands = [
            script_call(self._set_many, keys[i : i + _CHUNK], args[2 * i : 2 * (i + _CHUNK)])
            for i in range(0, len(keys), _CHUNK)
        ]
        commands += [
            script_call(ACK, queue.keys, of_queue[i : i + _CHUNK])
            for queue, of_queue in handles.items()
            for i in range(0, len(of_queue), _CHUNK)
        ]
        scripts = self._scripts
        try:
            # Replayed as a whole after a lost reply: SET, PUBLISH and the ack are idempotent.
            await self._redis.retrying(
                "set result and ack", lambda client: client.pipeline(commands, scripts)
            )
        except BaseException as exc:
            joint_flushed(items, exc)  # unsettled: redelivered after the visibility timeout
            raise
        joint_flushed(items, None)
        return [None] * len(items)

    async def close(self) -> None:
        """Let the flush in progress (and what queued behind it) finish."""
        await self._group.close()
