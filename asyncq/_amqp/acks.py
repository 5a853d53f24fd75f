"""Settling AMQP deliveries: plain and confirmed acks, requeues, and the copy guard.

:class:`CopyGuard` and :func:`ack_confirmed` keep publish-then-ack settlements (the RabbitMQ
broker's retries, hops and dead letters) from forking a message.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import weakref
from typing import cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

from asyncq._amqp.protocol import LeanMessage

__all__ = ["CopyGuard", "Message", "ack", "ack_confirmed", "delivered", "flush_acks", "is_stale", "requeue"]

log = logging.getLogger(__name__)


#: A delivery of either client: aio-pika's, or the lean consumer connection's.
Message = AbstractIncomingMessage | LeanMessage


def is_stale(message: Message) -> bool:
    """Whether the channel that delivered ``message`` is gone (the server will redeliver it)."""
    if isinstance(message, LeanMessage):
        return message.channel.is_closed
    try:
        message.channel  # noqa: B018 - the property raises once the channel is closed
    except ChannelInvalidStateError:
        return True
    return False


def delivered(message: Message) -> None:
    """Note a delivery on a consumer's channel: its acks are then batched (see :func:`ack`)."""
    if isinstance(message, LeanMessage):
        return  # the lean connection notes its deliveries itself
    tag = message.delivery_tag
    if tag is None:
        return
    channel = cast(aiormq.Channel, message.channel)
    batch = _BATCHES.get(channel)
    if batch is None:
        batch = _BATCHES[channel] = _AckBatch(channel)
    batch.unsettled.add(tag)


def _settled(message: Message) -> None:
    # Its settlement is queued: it no longer holds back the batch's multiple=True ack.
    if isinstance(message, LeanMessage):
        message.channel.settled(message.delivery_tag)
        return
    batch = _BATCHES.get(cast(aiormq.Channel, message.channel))
    if batch is not None and message.delivery_tag is not None:
        batch.unsettled.discard(message.delivery_tag)


async def ack(message: Message) -> None:
    """basic.ack without waiting for the socket to drain; batched on a consumer's channel.

    AMQP acks are never confirmed by the server, so waiting for the write buys nothing but a
    loop round trip per message; an ack lost with the connection means a redelivery either way.
    Acks of messages noted by :func:`delivered` are gathered for one loop iteration and sent
    as one write: one ``multiple=True`` ack for the run of tags below the oldest unsettled
    delivery, single acks for the rest.
    """
    if isinstance(message, LeanMessage):
        message.processed = True
        message.channel.ack(message.delivery_tag)
        return
    tag = message.delivery_tag
    if tag is None:
        return
    channel = cast(aiormq.Channel, message.channel)
    batch = _BATCHES.get(channel)
    if batch is None or tag not in batch.unsettled:
        await channel.basic_ack(delivery_tag=tag, wait=False)
        return
    batch.ack(tag)


def flush_acks(channel: aiormq.Channel) -> None:
    """Queue the batched acks of ``channel`` now (before it is closed)."""
    batch = _BATCHES.get(channel)
    if batch is not None:
        batch.flush()


class _AckBatch:
    """The acks of one consumer channel, queued as one write once per loop iteration."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        #: Tags delivered whose settlement is not queued yet: a multiple=True ack must stay below them.
        self.unsettled: set[int] = set()
        self._acked: list[int] = []

    def ack(self, tag: int) -> None:
        if not self._acked:
            asyncio.get_running_loop().call_soon(self.flush)
        self._acked.append(tag)

    def flush(self) -> None:
        if not self._acked:
            return
        acked, self._acked = sorted(self._acked), []
        channel = self._channel
        if channel.is_closed:
            return  # the server redelivers them, as with any ack lost with its channel
        unsettled = self.unsettled
        unsettled.difference_update(acked)
        # Everything below the oldest unsettled delivery is acked: one frame covers that run.
        end = bisect.bisect_left(acked, min(unsettled)) if unsettled else len(acked)
        frames = [Basic.Ack(delivery_tag=acked[end - 1], multiple=True)] if end else []
        frames += [Basic.Ack(delivery_tag=tag) for tag in acked[end:]]
        frame = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        if not channel.write_queue.full():
            channel.write_queue.put_nowait(frame)
            return
        # aiormq's write queue is full (backpressure): queue it when there is room. Still
        # safe: the multiple=True ack covers only tags acked here or settled already.
        task = asyncio.get_running_loop().create_task(channel.write_queue.put(frame), name="asyncq.amqp.acks")
        _PUTS.add(task)
        task.add_done_callback(_PUTS.discard)


_BATCHES: weakref.WeakKeyDictionary[aiormq.Channel, _AckBatch] = weakref.WeakKeyDictionary()
_PUTS: set[asyncio.Task[None]] = set()


async def requeue(message: Message) -> None:
    """Hand an unsettled message back to its queue, if its channel still lives."""
    if is_stale(message) or message.processed:
        return
    if isinstance(message, LeanMessage):
        message.processed = True
        try:
            message.channel.reject(message.delivery_tag, requeue=True)
        except Exception:  # best effort: a channel that dies requeues it anyway
            log.debug("could not requeue message %s", message.message_id, exc_info=True)
        return
    try:
        await message.reject(requeue=True)
    except Exception:  # best effort: a channel that dies requeues it anyway
        log.debug("could not requeue message %s", message.message_id, exc_info=True)
    finally:
        _settled(message)


async def ack_confirmed(message: Message, timeout: float) -> None:
    """basic.ack ``message``, returning once RabbitMQ has processed the ack.

    AMQP acks have no reply, and aiormq's ``wait=False`` only queues the frame; a synchronous
    method on the same channel is answered after every earlier frame of that channel, the
    ack included, so its reply confirms the ack (a passive declare of ``amq.direct`` changes
    nothing). Concurrent callers on one channel share one such round trip.
    """
    if isinstance(message, LeanMessage):
        message.processed = True
        lean = message.channel
        lean.settled(message.delivery_tag)
        lean.ack(message.delivery_tag)
        await lean.sync(timeout=timeout)  # its reply follows the ack: the ack was processed
        return
    if message.delivery_tag is None:
        return
    channel = cast(aiormq.Channel, message.channel)
    try:
        await channel.basic_ack(delivery_tag=message.delivery_tag, wait=False)
    finally:
        _settled(message)
    sync = _SYNCS.get(channel)
    if sync is None:
        sync = _SYNCS[channel] = _ChannelSync(channel)
    async with asyncio.timeout(timeout):
        await sync.after_queued_frames()


class _ChannelSync:
    """One synchronous round trip on a channel for every caller waiting when it is sent."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def after_queued_frames(self) -> asyncio.Future[None]:
        """A future done once the server has processed every frame queued on the channel so far."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        if self._task is None:
            self._task = loop.create_task(self._run(), name="asyncq.amqp.ack-sync")
        return future

    async def _run(self) -> None:
        batch: list[asyncio.Future[None]] = []
        try:
            while self._waiters:
                # Taken before the round trip is sent: each waiter's frames precede it.
                batch, self._waiters = self._waiters, []
                try:
                    await self._channel.exchange_declare("amq.direct", exchange_type="direct", passive=True)
                except Exception as exc:
                    for future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._task = None
            for future in (*batch, *self._waiters):  # cancelled: nobody will answer them
                if not future.done():
                    future.cancel()
            self._waiters = []


_SYNCS: weakref.WeakKeyDictionary[aiormq.Channel, _ChannelSync] = weakref.WeakKeyDictionary()


class CopyGuard:
    """Keeps a re-published message from forking into two live copies.

    Settling by re-publishing (retries, delays, redelivery counting, dead-lettering) sends
    the copy, then acks the original. Until the ack is processed, both exist; if the process
    dies then, RabbitMQ delivers the original again and it is copied again. Two rules close
    that window:

    * While a re-publish is between "copy sent" and "original's ack confirmed", this
      process hands out no delivery (:meth:`wait_idle`): a copy that kills its worker cannot
      start before the ack that retires its original has reached the server.
    * Each original that was copied is remembered (message id and incarnation header), so
      if its ack is lost anyway (a connection drop) and it comes back here, it is acked and
      dropped instead of run or copied again (:meth:`was_copied`).
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._active: set[asyncio.Future[None]] = set()
        self._copied: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    @staticmethod
    def incarnation(message: Message, header: str) -> tuple[str, str]:
        """What names this copy of a message: its id and the copy id asyncq gave it, if any."""
        copy_id = message.headers.get(header)
        return message.message_id or "", copy_id if isinstance(copy_id, str) else ""

    def begin(self) -> asyncio.Future[None]:
        """A re-publish starts; pass the token to :meth:`end` when its original is acked (or it failed)."""
        token: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._active.add(token)
        return token

    def end(self, token: asyncio.Future[None]) -> None:
        """The re-publish of ``token`` is over."""
        self._active.discard(token)
        if not token.done():
            token.set_result(None)

    async def wait_idle(self) -> None:
        """Return once every re-publish begun so far is over.

        Only those begun so far: a copy reaches the buffer after its re-publish began, and
        re-publishes begun later cannot hold back this delivery (no starvation under a
        steady stream of retries and hops).
        """
        if self._active:
            # asyncio.wait, not gather: a cancelled waiter must not cancel the tokens.
            await asyncio.wait(set(self._active))

    def copied(self, key: tuple[str, str]) -> None:
        """Remember that the incarnation ``key`` now has a copy in a queue."""
        self._copied[key] = None
        self._copied.move_to_end(key)
        while len(self._copied) > self._size:
            self._copied.popitem(last=False)

    def was_copied(self, key: tuple[str, str]) -> bool:
        """Whether this process already copied the incarnation ``key`` (it is a leftover)."""
        return key in self._copied
