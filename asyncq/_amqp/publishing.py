"""Publishes gathered per loop iteration and written as one frame batch, confirms pipelined.

aiormq writes every ``basic_publish`` to the socket on its own: with many small messages
(results, a worker's retries) the ``send`` system calls cost more than the rest of the
publish. :func:`publish` queues the frames of every publish made on a channel in one loop
iteration as a single write, assigning delivery tags and registering confirmations as
aiormq's own ``basic_publish`` does (under the channel's lock, so tags stay in wire order).
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
        if not self._pending:
            task = asyncio.get_running_loop().create_task(self._flush(), name="asyncq.amqp.publish-batch")
            _FLUSHES.add(task)
            task.add_done_callback(_FLUSHES.discard)
        self._pending.append((frames, future, properties.message_id if mandatory else None))
        return future

    async def _flush(self) -> None:
        channel = self._channel
        taken: list[tuple[list[Any], asyncio.Future[Any], str | None]] = []
        try:
            async with channel.lock:
                taken, self._pending = self._pending, []
                if channel.is_closed:
                    raise ChannelInvalidStateError(f"{channel!r} closed")
                frames: list[Any] = []
                for publish_frames, future, returnable in taken:
                    frames += publish_frames
                    if channel.publisher_confirms:
                        channel.delivery_tag += 1
                        tag = channel.delivery_tag
                        channel.confirmations[tag] = future
                        if returnable:
                            # How aiormq finds the confirm of a returned (unroutable) message.
                            channel.message_id_delivery_tag[returnable] = tag
                            future.add_done_callback(functools.partial(_forget, channel, returnable, tag))
                # Synchronous from taking tags to queuing: no other publish can come in between.
                channel.write_queue.put_nowait(
                    ChannelFrame.marshall(channel_number=channel.number, frames=frames)
                )
            if not channel.publisher_confirms:
                for _, future, _ in taken:
                    if not future.done():
                        future.set_result(None)
        except BaseException as exc:
            failed = ChannelInvalidStateError(f"publish failed: {exc!r}")
            # Those taken and those still waiting: nobody else would flush the latter.
            rest, self._pending = self._pending, []
            for _, future, _ in (*taken, *rest):
                if not future.done():
                    future.set_exception(failed)
            if not isinstance(exc, Exception):
                raise


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: object) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


_BATCHES: weakref.WeakKeyDictionary[aiormq.Channel, _PublishBatch] = weakref.WeakKeyDictionary()
_FLUSHES: set[asyncio.Task[None]] = set()
