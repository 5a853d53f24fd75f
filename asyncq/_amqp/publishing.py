"""Publishes gathered per loop iteration and written as one frame batch, confirms pipelined.

aiormq writes every ``basic_publish`` to the socket on its own: with many small messages
(results, a worker's retries) the ``send`` system calls cost more than the rest of the
publish. :func:`publish` writes the first publish of a loop iteration at once and queues the
frames of the others made on that channel in the same iteration as a single write, assigning
delivery tags and registering confirmations as aiormq's own ``basic_publish`` does. The
channels given to it carry no other publishes, so tags stay in wire order.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import weakref
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

__all__ = ["publish"]


def publish(
    channel: aiormq.Channel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Basic.Properties,
    mandatory: bool = False,
) -> asyncio.Future[Any]:
    """Publish in the channel's next batch; the future is its confirm.

    On a channel without publisher confirms the future is done once the frames are queued.
    ``mandatory`` needs confirms and a ``message_id``: a returned message fails the future
    with aiormq's PublishError (``on_return_raises``), as ``basic_publish`` does.
    """
    batch = _BATCHES.get(channel)
    if batch is None:
        batch = _BATCHES[channel] = _PublishBatch(channel)
    return batch.add(body, exchange, routing_key, properties, mandatory)


class _PublishBatch:
    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        self._pending: list[tuple[list[Any], asyncio.Future[Any], str | None]] = []
        self._flushes = 0  # flush tasks not finished: publishes queue behind them meanwhile

    def add(
        self, body: bytes, exchange: str, routing_key: str, properties: Basic.Properties, mandatory: bool
    ) -> asyncio.Future[Any]:
        channel = self._channel
        if mandatory and not properties.message_id:
            properties.message_id = uuid.uuid4().hex  # as basic_publish does: returns are matched by it
        frames: list[Any] = [
            Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            ContentHeader(properties=properties, body_size=len(body)),
            *channel._split_body(body),
        ]
        # From the channel's store: closing the channel fails it, as aiormq's own would be.
        future: asyncio.Future[Any] = channel.create_future()
        item = (frames, future, properties.message_id if mandatory else None)
        if (
            not self._pending
            and not self._flushes
            and not channel.is_closed
            and not channel.write_queue.full()
        ):
            # Nothing gathered yet: write it now (a sequential publisher pays no extra loop
            # iteration); later ones this iteration are gathered. Only this module publishes
            # on the channels it is given, so no basic_publish can be halfway through here.
            channel.write_queue.put_nowait(self._frame([item]))
            return future
        if not self._pending:
            self._flushes += 1
            task = asyncio.get_running_loop().create_task(self._flush(), name="asyncq.amqp.publish-batch")
            _FLUSHES.add(task)
            task.add_done_callback(_FLUSHES.discard)
        self._pending.append(item)
        return future

    def _frame(self, items: list[tuple[list[Any], asyncio.Future[Any], str | None]]) -> ChannelFrame:
        # Tags are taken in the order the frames go out: the caller queues this frame before
        # any other publish of the channel can be framed (the immediate path waits for
        # every flush in progress).
        channel = self._channel
        frames: list[Any] = []
        for publish_frames, future, returnable in items:
            frames += publish_frames
            if channel.publisher_confirms:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                channel.confirmations[tag] = future
                if returnable:
                    # How aiormq finds the confirm of a returned (unroutable) message.
                    channel.message_id_delivery_tag[returnable] = tag
                    future.add_done_callback(functools.partial(_forget, channel, returnable, tag))
        if not channel.publisher_confirms:
            for _, future, _ in items:
                if not future.done():
                    future.set_result(None)
        return ChannelFrame.marshall(channel_number=channel.number, frames=frames)

    async def _flush(self) -> None:
        channel = self._channel
        taken: list[tuple[list[Any], asyncio.Future[Any], str | None]] = []
        try:
            async with channel.lock:
                taken, self._pending = self._pending, []
                if not taken:
                    return  # an earlier flush failed them all
                if channel.is_closed:
                    raise ChannelInvalidStateError(f"{channel!r} closed")
                # Waits when aiormq's write queue is full (backpressure); later publishes
                # queue behind this flush, in order (the lock is first come, first served).
                await channel.write_queue.put(self._frame(taken))
        except BaseException as exc:
            failed = ChannelInvalidStateError(f"publish failed: {exc!r}")
            # Those taken and those still waiting: nobody else would flush the latter.
            rest, self._pending = self._pending, []
            for _, future, _ in (*taken, *rest):
                if not future.done():
                    future.set_exception(failed)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flushes -= 1


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: object) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


_BATCHES: weakref.WeakKeyDictionary[aiormq.Channel, _PublishBatch] = weakref.WeakKeyDictionary()
_FLUSHES: set[asyncio.Task[None]] = set()
