"""``sqs://`` broker: Amazon SQS queues (standard or FIFO) through aiobotocore.

This module owns the receive loop, settling, visibility renewal, delays past SQS's 15
minutes, priority bands and dead letters. URL options are in _sqs_options.py, the message
layout in _sqs_codec.py, the client and its errors in _sqs_client.py. The guarantees and
their limits are written up in docs/brokers/sqs.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, final

from asyncq._utils import cancel_and_wait, describe_error
from asyncq.brokers._batching import BatchCalls
from asyncq.brokers._kit import check_consume
from asyncq.brokers._sqs_client import SQSClient, error_code, is_missing_queue
from asyncq.brokers._sqs_codec import Received, decode, encode
from asyncq.brokers._sqs_options import MAX_DELAY, MAX_VISIBILITY, SQSSettings, parse_sqs_url
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerError, ConfigurationError

__all__ = ["SQSBroker"]

logger = logging.getLogger(__name__)

#: SQS takes at most this many entries per batch call, and per receive.
BATCH: Final = 10
#: Most messages one dead-letter scan reads (each scan reads the whole dead-letter queue).
SCAN_LIMIT: Final = 100_000
_RECEIVE: dict[str, Any] = {
    "MessageAttributeNames": ["All"],
    "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
}

Entry = dict[str, Any]
Taken = tuple[Received, str]  # a received message and its asyncq queue


@dataclass(slots=True)
class _Target:
    """One SQS queue a consumer polls: a priority band of an asyncq queue."""

    queue: str
    url: str
    weight: float


@dataclass(slots=True, eq=False)
class _Consumer:
    """One consume() iterator's state."""

    targets: list[_Target]
    buffer: deque[Taken] = field(default_factory=deque)
    out: int = 0  # yielded and not settled: at most prefetch
    polls: dict[int, asyncio.Task[list[Taken]]] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self) -> None:
        self.out -= 1
        self.wakeup.set()


class _SQSDelivery:
    """A received message; settles are SQS calls (acks batched with their neighbours)."""

    __slots__ = ("_broker", "_consumer", "_is_settled", "_received", "body", "delivery_count", "id", "queue")

    def __init__(self, broker: SQSBroker, consumer: _Consumer, received: Received, queue: str) -> None:
        self.id, self.queue, self.body = received.id, queue, received.body
        self.delivery_count = received.count
        self._broker, self._consumer, self._received = broker, consumer, received
        self._is_settled = False

    async def ack(self) -> None:
        await self._settle(self._broker._delete(self._received))

    async def nack(self, *, delay: float | None = None) -> None:
        await self._settle(self._broker._return(self._received, self.queue, delay or 0.0))

    async def dead_letter(self, reason: str) -> None:
        await self._settle(self._broker._bury(self._received, self.queue, reason))

    async def _settle(self, operation: Any) -> None:
        if self._is_settled:
            operation.close()
            raise BrokerError(f"delivery {self.id} was already settled")
        self._is_settled = True
        held = self._broker._held.pop(self._received.receipt, None)
        try:
            await operation
        except BrokerError:
            self._is_settled = False  # nothing changed: the caller may settle again
            if held is not None:
                self._broker._held[self._received.receipt] = held
            raise
        finally:
            if self._is_settled:
                self._consumer.settled()


@final
class SQSBroker(BrokerDefaults):
    """``sqs://``: task queues on Amazon SQS (or an SQS-compatible service).

    Options (transport options, or the URL query; explicit options win): ``region``,
    ``endpoint_url``, ``tls``, ``aws_access_key_id`` / ``aws_secret_access_key`` /
    ``aws_session_token``, ``queue_prefix``, ``fifo``, ``message_group``, ``priority_steps``,
    ``priority_weights``, ``visibility_timeout`` (30), ``wait_time`` (10), ``max_message_size``
    (262144), ``request_timeout`` (30), ``connect_timeout`` (10), ``create_queues`` (true).
    See docs/brokers/sqs.md.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.settings: SQSSettings = parse_sqs_url(url, options)
        s = self.settings
        self.capabilities = BrokerCapabilities(
            durable=True,
            redelivers_lost=True,
            notifies=False,  # long polling: a publish is seen within one receive, not pushed
            priorities=len(s.priority_steps) > 1,
            delayed_delivery=True,
        )
        self._client = SQSClient(s)
        self._urls: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: dict[str, str] = {}  # receipt handle -> queue URL: received, not settled
        self._consumers: set[_Consumer] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._sends: BatchCalls[Entry] = BatchCalls(self._send_batch, BATCH)
        # Acks of a busy worker come from many jobs finishing apart: a short linger puts them
        # in one DeleteMessageBatch instead of one request each.
        self._deletes: BatchCalls[str] = BatchCalls(self._delete_batch, BATCH, linger=0.01)

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._client.open()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew(), name="asyncq.sqs.heartbeat")

    async def aclose(self) -> None:
        """Hand back what was received and not yielded; unsettled deliveries come back after the timeout."""
        for consumer in list(self._consumers):
            self._abandon(consumer)
        if self._background:
            limit = self.settings.wait_time + self.settings.request_timeout
            await asyncio.wait(set(self._background), timeout=limit)
        await self._sends.drain()
        await self._deletes.drain()
        await cancel_and_wait(self._heartbeat)
        self._heartbeat = None
        await self._client.close()

    async def __aenter__(self) -> SQSBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- queues ------------------------------------------------------------------------------

    async def _queue_url(self, name: str, *, create: bool = True) -> str | None:
        """The URL of SQS queue ``name``, created when missing (unless told not to)."""
        found = self._urls.get(name)
        if found is not None:
            return found
        async with self._locks.setdefault(name, asyncio.Lock()):
            found = self._urls.get(name)
            if found is not None:
                return found
            try:
                found = str((await self._client.call("get_queue_url", QueueName=name))["QueueUrl"])
            except BrokerError as exc:
                if not is_missing_queue(exc.__cause__ or exc):
                    raise
                if not create:
                    return None
                if not self.settings.create_queues:
                    raise ConfigurationError(
                        f"SQS queue {name!r} does not exist (create_queues=false)"
                    ) from None
                attributes = {"VisibilityTimeout": str(self.settings.visibility_timeout)}
                if self.settings.fifo:
                    attributes["FifoQueue"] = "true"
                reply = await self._client.call("create_queue", QueueName=name, Attributes=attributes)
                found = str(reply["QueueUrl"])
            self._urls[name] = found
            return found

    async def _url_of(self, name: str) -> str:
        found = await self._queue_url(name)
        assert found is not None  # create=True returns a URL or raises
        return found

    def _names(self, queue: str) -> list[tuple[str, float]]:
        """The SQS queue name and poll weight of each priority band of ``queue``, highest first."""
        s = self.settings
        bands = zip(s.priority_steps, s.priority_weights, strict=True)
        return [(s.physical_name(queue, step), weight) for step, weight in reversed(list(bands))]

    # -- publishing --------------------------------------------------------------------------

    def _entry(
        self, message: OutgoingMessage, *, prior: int = 0, dedup: str | None = None, reason: str | None = None
    ) -> Entry:
        s = self.settings
        now = time.time()
        remaining = 0.0 if message.eta is None else message.eta - now
        # Past SQS's 15-minute delay (or on FIFO queues, which have no per-message delay) the eta
        # travels with the message, and a consumer that receives it early sends it on (a hop).
        keep_eta = remaining > (0 if s.fifo else MAX_DELAY)
        body, attributes = encode(
            message.id,
            bytes(message.body),
            queue=message.queue,
            max_size=s.max_message_size,
            priority=message.priority or 0,
            eta=message.eta if keep_eta else None,
            prior=prior,
            reason=reason,
        )
        entry: Entry = {"MessageBody": body, "MessageAttributes": attributes}
        if s.fifo:
            group = s.message_group
            key = message.queue if group == "queue" else message.id if group == "id" else str(group(message))  # type: ignore[operator]
            entry["MessageGroupId"] = message.id if reason is not None else key[:128]
            entry["MessageDeduplicationId"] = (dedup or message.id)[:128]
        elif remaining > 0:
            entry["DelaySeconds"] = min(MAX_DELAY, math.ceil(remaining))
        return entry

    async def publish(self, message: OutgoingMessage) -> None:
        entry = self._entry(message)
        url = await self._url_of(
            self.settings.physical_name(message.queue, self.settings.band(message.priority))
        )
        await self._sends.call(url, entry)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        # Every message is checked before any is sent: a too-large one fails the call whole.
        s = self.settings
        grouped: dict[str, list[Entry]] = {}
        for message in messages:
            name = s.physical_name(message.queue, s.band(message.priority))
            grouped.setdefault(name, []).append(self._entry(message))
        for name, entries in grouped.items():
            await self._send_all(await self._url_of(name), entries)

    async def _send_all(self, url: str, entries: list[Entry]) -> None:
        for start in range(0, len(entries), BATCH):
            errors = [e for e in await self._send_batch(url, entries[start : start + BATCH]) if e is not None]
            if errors:
                raise errors[0]

    async def _send_batch(self, url: str, entries: Sequence[Entry]) -> list[BaseException | None]:
        """Send up to ten entries, split further so that each call stays within the size limit."""
        outcomes: list[BaseException | None] = []
        chunk: list[Entry] = []
        size = 0
        limit = self.settings.max_message_size
        for entry in [*entries, None]:
            weight = 0 if entry is None else _weight(entry)
            if chunk and (entry is None or size + weight > limit):
                outcomes += await self._send_chunk(url, chunk)
                chunk, size = [], 0
            if entry is not None:
                chunk.append(entry)
                size += weight
        return outcomes

    async def _send_chunk(self, url: str, chunk: list[Entry]) -> list[BaseException | None]:
        numbered = [{"Id": str(i), **entry} for i, entry in enumerate(chunk)]
        reply = await self._client.call("send_message_batch", QueueUrl=url, Entries=numbered)
        outcomes: list[BaseException | None] = [None] * len(chunk)
        for failed in reply.get("Failed", []):
            outcomes[int(failed["Id"])] = BrokerError(
                f"SQS refused a message for {url}: {failed.get('Code')}: {failed.get('Message')}"
            )
        return outcomes

    # -- settling ----------------------------------------------------------------------------

    async def _delete(self, received: Received) -> None:
        await self._deletes.call(received.url, received.receipt)

    async def _delete_batch(self, url: str, receipts: Sequence[str]) -> list[BaseException | None]:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        reply = await self._client.call("delete_message_batch", QueueUrl=url, Entries=entries)
        for failed in reply.get("Failed", []):
            # A receipt from before the visibility lapsed: the message is someone else's now.
            logger.warning("ack had no effect on %s: %s", url, failed.get("Message") or failed.get("Code"))
        return [None] * len(receipts)

    async def _set_visibility(self, received: Received, seconds: float) -> None:
        await self._client.call(
            "change_message_visibility",
            QueueUrl=received.url,
            ReceiptHandle=received.receipt,
            VisibilityTimeout=min(MAX_VISIBILITY, math.ceil(seconds)),
        )

    async def _resend(self, received: Received, queue: str, *, eta: float | None, prior: int) -> None:
        """Send a copy of ``received`` (same id, body, priority) due at ``eta``, then drop it."""
        copy = OutgoingMessage(received.id, queue, received.body, received.priority, eta)
        await self._send_all(received.url, [self._entry(copy, prior=prior)])
        await self._delete(received)

    async def _return(self, received: Received, queue: str, delay: float) -> None:
        if delay <= 0 or self.settings.fifo:
            await self._set_visibility(received, delay)  # FIFO: the group waits with it
        else:
            # A copy with DelaySeconds (hops past 15 minutes) keeps counting as waiting.
            await self._resend(received, queue, eta=time.time() + delay, prior=received.count)

    async def _bury(self, received: Received, queue: str, reason: str) -> None:
        dead = OutgoingMessage(received.id, queue, received.body, received.priority)
        entry = self._entry(dead, dedup=f"{received.id}.{uuid.uuid4().hex}", reason=reason)
        url = await self._url_of(self.settings.physical_name(queue, dead=True))
        await self._send_all(url, [entry])
        await self._delete(received)

    async def _renew(self) -> None:
        """Extend the visibility of every held message a third of the way into its timeout."""
        timeout = self.settings.visibility_timeout
        while True:
            await asyncio.sleep(timeout / 3)
            by_url: dict[str, list[str]] = {}
            for receipt, url in list(self._held.items()):
                by_url.setdefault(url, []).append(receipt)
            calls = []
            for url, receipts in by_url.items():
                for start in range(0, len(receipts), BATCH):
                    entries = [
                        {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": timeout}
                        for i, r in enumerate(receipts[start : start + BATCH])
                    ]
                    calls.append(
                        self._client.call("change_message_visibility_batch", QueueUrl=url, Entries=entries)
                    )
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    logger.warning("could not extend message visibility: %s", describe_error(outcome))

    # -- consuming ---------------------------------------------------------------------------

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        names = check_consume(queues, prefetch)
        targets = [
            _Target(queue, await self._url_of(name), weight)
            for queue in names
            for name, weight in self._names(queue)
        ]
        consumer = _Consumer(targets)
        self._consumers.add(consumer)
        try:
            while True:
                while not (consumer.buffer and consumer.out < prefetch):
                    await self._fill(consumer, prefetch)
                received, queue = consumer.buffer.popleft()
                consumer.out += 1
                yield _SQSDelivery(self, consumer, received, queue)
        finally:
            self._abandon(consumer)

    async def _fill(self, consumer: _Consumer, prefetch: int) -> None:
        """One round: take what is ready now, or long-poll every band until something arrives."""
        consumer.wakeup.clear()
        free = prefetch - consumer.out - len(consumer.buffer)
        if free <= 0:
            await consumer.wakeup.wait()
            return
        top = max(t.weight for t in consumer.targets)
        asks = [min(BATCH, max(1, math.ceil(free * t.weight / top))) for t in consumer.targets]
        if not consumer.polls:
            # A quick look at every band first, so that ready messages come out in priority order.
            quick = await asyncio.gather(
                *(self._receive(t, n, 0) for t, n in zip(consumer.targets, asks, strict=True))
            )
            if await self._take(consumer, [r for batch in quick for r in batch]):
                return
        for i, (target, ask) in enumerate(zip(consumer.targets, asks, strict=True)):
            if i not in consumer.polls:
                wait = self.settings.wait_time
                consumer.polls[i] = asyncio.create_task(
                    self._receive(target, ask, wait), name="asyncq.sqs.poll"
                )
        await asyncio.wait(consumer.polls.values(), return_when=asyncio.FIRST_COMPLETED)
        got: list[Taken] = []
        for i, poll in list(consumer.polls.items()):
            if poll.done():
                del consumer.polls[i]
                got += poll.result()  # a failed receive ends the round with its error
        await self._take(consumer, got)

    async def _receive(self, target: _Target, count: int, wait: int) -> list[Taken]:
        reply = await self._client.call(
            "receive_message",
            QueueUrl=target.url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.settings.visibility_timeout,
            **_RECEIVE,
        )
        got = [decode(raw, target.url) for raw in reply.get("Messages", [])]
        for received in got:
            self._held[received.receipt] = target.url
        return [(received, target.queue) for received in got]

    async def _take(self, consumer: _Consumer, got: list[Taken]) -> bool:
        """Buffer the due messages of ``got`` (highest priority first); send the early ones on."""
        now = time.time()
        due = []
        for received, queue in got:
            if received.eta is not None and received.eta > now:
                self._held.pop(received.receipt, None)
                await self._postpone(received, queue)
            else:
                due.append((received, queue))
        merged = [*consumer.buffer, *due]
        merged.sort(key=lambda item: -item[0].priority)  # stable: bands were polled highest first
        consumer.buffer = deque(merged)
        return bool(due)

    async def _postpone(self, received: Received, queue: str) -> None:
        """A message received before its eta: hidden again (FIFO), or re-sent with a delay (a hop)."""
        assert received.eta is not None
        if self.settings.fifo:
            await self._set_visibility(received, received.eta - time.time())
        else:
            # This receive was not a delivery: the copy carries the deliveries made before it.
            await self._resend(received, queue, eta=received.eta, prior=received.count - 1)

    def _abandon(self, consumer: _Consumer) -> None:
        """Hand back a closed consumer's buffer now, and what its open polls bring when they end."""
        self._consumers.discard(consumer)
        buffered = [received for received, _ in consumer.buffer]
        consumer.buffer.clear()
        polls = list(consumer.polls.values())
        consumer.polls.clear()
        consumer.wakeup.set()
        if buffered or polls:
            task = asyncio.create_task(self._hand_back(buffered, polls), name="asyncq.sqs.hand-back")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _hand_back(self, buffered: list[Received], polls: list[asyncio.Task[list[Taken]]]) -> None:
        # A poll cancelled mid-request could still take messages at the server: let it finish.
        for outcome in await asyncio.gather(*polls, return_exceptions=True):
            if isinstance(outcome, list):
                buffered += [received for received, _ in outcome]
        for received in buffered:
            self._held.pop(received.receipt, None)
        try:
            await asyncio.gather(*(self._set_visibility(r, 0) for r in buffered))
        except BrokerError as exc:  # not fatal: they come back when their visibility lapses
            logger.warning("could not hand back %d received messages: %s", len(buffered), describe_error(exc))

    # -- inspection --------------------------------------------------------------------------

    async def _attribute_sum(self, queue: str, names: list[str]) -> int:
        total = 0
        for name, _ in self._names(queue):
            url = await self._queue_url(name, create=False)
            if url is None:
                continue
            reply = await self._client.call("get_queue_attributes", QueueUrl=url, AttributeNames=names)
            total += sum(int(reply["Attributes"].get(n, 0)) for n in names)
        return total

    async def queue_length(self, queue: str) -> int:
        """Waiting and delayed messages (SQS's approximate counts)."""
        return await self._attribute_sum(
            queue, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        )

    async def purge(self, queue: str) -> int:
        """SQS PurgeQueue on every band: in-flight messages go too, and once a minute per queue."""
        count = await self.queue_length(queue)
        for name, _ in self._names(queue):
            url = await self._queue_url(name, create=False)
            if url is None:
                continue
            try:
                await self._client.call("purge_queue", QueueUrl=url)
            except BrokerError as exc:
                if error_code(exc.__cause__ or exc).endswith("PurgeQueueInProgress"):
                    raise BrokerError(
                        f"SQS allows one purge of {name!r} per 60 seconds; try again later"
                    ) from None
                raise
        return count

    # -- dead letters ------------------------------------------------------------------------

    async def _scan(self, queue: str) -> tuple[str | None, list[Received]]:
        """Read (and hold) every dead letter of ``queue``; the caller releases or deletes them."""
        url = await self._queue_url(self.settings.physical_name(queue, dead=True), create=False)
        if url is None:
            return None, []
        found: list[Received] = []
        hold = math.ceil(self.settings.request_timeout) * 2
        misses = 0
        while len(found) < SCAN_LIMIT and misses < 3:
            reply = await self._client.call(
                "receive_message", QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=min(misses, 1),
                VisibilityTimeout=hold, **_RECEIVE,
            )  # fmt: skip
            batch = [decode(raw, url) for raw in reply.get("Messages", [])]
            found += batch
            if batch:
                misses = 0
                continue
            counts = await self._client.call(
                "get_queue_attributes", QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )
            misses = 3 if counts["Attributes"].get("ApproximateNumberOfMessages", "0") == "0" else misses + 1
        found.sort(key=lambda r: r.dead_at or 0.0)
        return url, found

    async def _release(self, letters: list[Received]) -> None:
        await asyncio.gather(*(self._set_visibility(r, 0) for r in letters))

    def _letter(self, received: Received, queue: str) -> DeadLetter:
        return DeadLetter(received.id, queue, received.body, received.reason or "", received.dead_at or 0.0)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        _, found = await self._scan(queue)
        await self._release(found)
        return [self._letter(r, queue) for r in found[:limit]]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        _, found = await self._scan(queue)
        await self._release(found)
        return next((self._letter(r, queue) for r in found if r.id == message_id), None)

    async def _requeue(self, queue: str, letters: list[Received]) -> None:
        """Send ``letters`` back to ``queue`` as fresh messages, then delete them from the dead letters."""
        for received in letters:
            fresh = OutgoingMessage(received.id, queue, received.body, received.priority)
            url = await self._url_of(
                self.settings.physical_name(queue, self.settings.band(received.priority))
            )
            await self._send_all(url, [self._entry(fresh, dedup=f"{received.id}.{uuid.uuid4().hex}")])
            await self._delete(received)

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        _, found = await self._scan(queue)
        chosen = next((r for r in found if r.id == message_id), None)
        await self._release([r for r in found if r is not chosen])
        if chosen is None:
            return False
        await self._requeue(queue, [chosen])
        return True

    async def requeue_dead_letters(self, queue: str) -> int:
        _, found = await self._scan(queue)
        await self._requeue(queue, found)
        return len(found)

    async def purge_dead_letters(self, queue: str) -> int:
        _, found = await self._scan(queue)
        await asyncio.gather(*(self._delete(r) for r in found))
        return len(found)


def _weight(entry: Entry) -> int:
    """About what SQS counts of an entry against a batch's size limit."""
    size = len(entry["MessageBody"].encode())
    for name, attribute in entry["MessageAttributes"].items():
        value = attribute.get("BinaryValue") or attribute.get("StringValue", "").encode()
        size += len(name) + len(attribute["DataType"]) + len(value)
    return size
