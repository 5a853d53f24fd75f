"""The Redis broker's consumer: claims within the prefetch bound, and waits woken by BLPOP.

``claim`` (one script per queue) moves due delayed messages to ready, returns expired leases
to ready, pops up to N handles in priority order and leases them. An idle consumer blocks
on the queues' wake lists on its own connection(s), so a publish wakes it at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from asyncq._redis import (
    CLIENT_ERRORS,
    MasterSwitchedError,
    ResponseError,
    retry_pause,
    script_call,
    translate_error,
)
from asyncq._resp import pack_commands
from asyncq._utils import describe_error
from asyncq.brokers._redis_leases import Leases, RedisDelivery
from asyncq.brokers._redis_scripts import CLAIM, MOVE_LIMIT, SCRIPTS, Queue
from asyncq.exceptions import BrokerConnectionError, BrokerError

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["Blocker", "Consumer"]

logger = logging.getLogger("asyncq.brokers.redis")


class Consumer:
    """One ``consume()`` iterator: a fetch task keeps a buffer filled within the prefetch bound.

    Fetching runs ahead of the caller (the next claim overlaps the caller's work), but the
    buffer plus the yielded-and-unsettled deliveries never exceed ``prefetch``.
    """

    def __init__(self, leases: Leases, queues: list[Queue], prefetch: int) -> None:
        self._leases = leases
        self._queues = queues
        self._prefetch = prefetch
        self._batch = min(prefetch, leases.batch_size)
        # Refill ahead only once a worthwhile batch is free; an empty buffer refills at once.
        self._refill_at = max(1, self._batch // 2)
        self._unsettled = 0
        self._buffer: deque[RedisDelivery] = deque()
        self._has_items = asyncio.Event()
        self._room = asyncio.Event()
        self._fetcher_idle = False
        self._failure: BaseException | None = None
        self._rotation = 0
        self._blockers: dict[int, Blocker] = {}  # by hash slot (one, 0, outside a Cluster)
        # Checked at every step as well as cancelling the task: a cancellation can be lost in
        # a client library (see asyncq._redis.Client), a flag cannot.
        self._closing = False
        self._settled = self.settled  # bound once: every delivery calls it
        self._task = asyncio.create_task(self._fetch_loop(), name="asyncq.redis.fetch")

    def _may_fetch(self) -> bool:
        free = self._prefetch - self._unsettled
        return free > 0 and (not self._buffer or free >= self._refill_at)

    def settled(self) -> None:
        self._unsettled -= 1
        if self._fetcher_idle:  # _may_fetch(), inline: every delivery calls this
            free = self._prefetch - self._unsettled
            if free > 0 and (not self._buffer or free >= self._refill_at):
                self._room.set()

    def fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._has_items.set()

    def take(self) -> RedisDelivery | None:
        """The next buffered delivery, or None when :meth:`next` has to wait for one."""
        buffer = self._buffer
        if not buffer:
            return None
        delivery = buffer.popleft()
        if not buffer and self._fetcher_idle and self._may_fetch():
            self._room.set()
        return delivery

    async def next(self) -> RedisDelivery:
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
                    async with asyncio.timeout(self._leases.redis.client().command_timeout):
                        got, hint_ms = await self._claim(want)
                else:
                    (got, hint_ms, want), claimed = claimed, None
                if got < want and hint_ms != 0 and not self._closing:  # drained: wait for work
                    wait = (
                        self._leases.poll_interval
                        if hint_ms < 0
                        else min(self._leases.poll_interval, hint_ms / 1000)
                    )
                    room = min(self._prefetch - self._unsettled, self._batch)
                    taken = await self._block(wait, room)
                    if taken is not None:
                        claimed = (*taken, room)
            except CLIENT_ERRORS as exc:
                claimed = None
                self._leases.redis.client().failed(exc)
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
        leases = self._leases
        client = leases.redis.client()
        count = len(self._queues)
        start = self._rotation
        self._rotation = (start + 1) % count
        got, hint = 0, -1
        for i in range(count):
            queue = self._queues[(start + i) % count]
            reply = await client.eval(
                CLAIM, queue.keys, (want - got, leases.visibility_ms, MOVE_LIMIT, leases.owner), SCRIPTS
            )
            claimed, queue_hint = self._taken(queue, reply)
            got += claimed
            if queue_hint >= 0 and (hint < 0 or queue_hint < hint):
                hint = queue_hint
            if got >= want:
                break
        return got, hint

    def _taken(self, queue: Queue, reply: list[Any]) -> tuple[int, int]:
        """Buffer the deliveries of one claim's reply; return how many, and its hint (ms)."""
        leases = self._leases
        held = leases.held.setdefault(queue, {})
        last = len(reply) - 1
        for j in range(0, last, 3):
            delivery = RedisDelivery(leases, self._settled, queue, reply[j], reply[j + 1], reply[j + 2])
            held[delivery._handle] = delivery
            self._buffer.append(delivery)
        claimed = last // 3
        if claimed:
            self._unsettled += claimed
            self._has_items.set()
            leases.start_heartbeat()
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
        leases = self._leases
        client = leases.redis.client()
        wait = max(0.01, seconds)
        groups: dict[int, list[bytes]] = {}
        for queue in self._queues:
            groups.setdefault(client.slot_of(queue.wake), []).append(queue.wake)
        claim = None
        if len(self._queues) == 1:
            claim = script_call(
                CLAIM, self._queues[0].keys, (want, leases.visibility_ms, MOVE_LIMIT, leases.owner)
            )
        waiting: set[asyncio.Future[Any]] = set()
        for slot, keys in groups.items():
            node = client.node_of(keys[0])
            blocker = self._blockers.get(slot)
            if blocker is not None and blocker.node != node:  # a failover moved the slot
                await self._blockers.pop(slot).close()
                blocker = None
            if blocker is None:
                blocker = self._blockers[slot] = Blocker(client.dedicated_connection(keys[0]), node)
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
            delivery.forget()
        try:
            if leftovers:
                await self._leases.release(leftovers)
        except BrokerError as exc:
            logger.warning(
                "could not return %d prefetched messages (%s); they return after the visibility timeout",
                len(leftovers),
                describe_error(exc),
            )
        finally:
            await self._close_blockers()


class Blocker:
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
