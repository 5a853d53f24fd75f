"""``kafka://`` broker: task queues on Apache Kafka (or a Kafka-protocol server) through aiokafka.

A queue is a topic; workers of one consumer group share its partitions. Delays and delayed
retries go through ``<topic>.delay``, dead letters to ``<topic>.dead`` with the reason in
headers. The consumer side (offsets, the delay mover) is in _kafka_consumer.py, delivery
counts of records whose consumer died in _kafka_redelivery.py; options in _kafka_options.py.
What a log can and cannot do as a task queue: docs/brokers/kafka.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, final

from asyncq._connect import describe_peer
from asyncq._utils import describe_error
from asyncq.brokers._kafka_options import KafkaSettings, parse_kafka_url
from asyncq.brokers._kit import check_consume
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerConnectionError, BrokerError, MessageTooLargeError, MissingDependencyError

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from asyncq.brokers._kafka_consumer import DELAY, H_ETA, ConsumerSession, Lease, header
    from asyncq.brokers._kafka_redelivery import MARKS
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aiokafka", "kafka") from exc

__all__ = ["KafkaBroker"]

T = TypeVar("T")

H_ID: Final = "asyncq-id"
H_COUNT: Final = "asyncq-count"  # deliveries before this copy was produced
H_REASON: Final = "asyncq-reason"
H_DEAD_AT: Final = "asyncq-dead-at"
H_REMOVED: Final = "asyncq-removed"  # a tombstone: "partition:offset" of a dead letter taken out
DEAD: Final = ".dead"
_TOPIC_EXISTS: Final = 36
#: The first bytes of a Kafka ApiVersions request, to see what answers at a wrong address.
_HELLO: Final = b"\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00"

Headers = list[tuple[str, bytes]]


def _is_kafka_reply(data: bytes) -> bool:
    """A Kafka response to ``_HELLO``: a length, then the request's correlation id (1)."""
    return len(data) >= 8 and int.from_bytes(data[:4], "big") > 0 and data[4:8] == b"\x00\x00\x00\x01"


class _KafkaDelivery:
    """A record; ack finishes its offset, nack and dead_letter produce a copy first."""

    __slots__ = (
        "_broker",
        "_is_settled",
        "_lease",
        "_record",
        "_session",
        "body",
        "delivery_count",
        "id",
        "queue",
    )

    def __init__(
        self, broker: KafkaBroker, session: ConsumerSession, lease: Lease, record: Any, queue: str
    ) -> None:
        self.id = header(record, H_ID) or f"{record.topic}:{record.partition}:{record.offset}"
        self.queue, self.body = queue, bytes(record.value or b"")
        self.delivery_count = int(header(record, H_COUNT) or 0) + 1
        if session.marks.redelivered(lease[0], lease[1]):
            self.delivery_count += 1  # the delivery its consumer died with, not in its header
        self._broker, self._session, self._lease, self._record = broker, session, lease, record
        self._is_settled = False

    async def ack(self) -> None:
        await self._settle(None)

    async def nack(self, *, delay: float | None = None) -> None:
        eta = time.time() + delay if delay else None
        copy = self._broker._record(
            OutgoingMessage(self.id, self.queue, self.body, eta=eta), count=self.delivery_count
        )
        await self._settle(lambda: self._broker._produce([copy]))

    async def dead_letter(self, reason: str) -> None:
        record = self._broker._dead_record(self.id, self.queue, self.body, reason)
        await self._settle(lambda: self._broker._produce([record], create_partitions=1))

    async def _settle(self, produce: Callable[[], Awaitable[None]] | None) -> None:
        if self._is_settled:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._is_settled = True
        try:
            if produce is not None:
                await produce()  # the copy is stored before the original's offset may move on
        except BaseException:
            self._is_settled = False  # nothing changed: the caller may settle again
            raise
        self._session.finish(self._lease)
        self._session.settled()


@final
class KafkaBroker(BrokerDefaults):
    """``kafka://host:9092[,host:9092]``: task queues on Kafka topics, one consumer group.

    Options (transport options, or the URL query): ``group_id`` ("asyncq"), ``topic_prefix``,
    ``partitions`` (6, for topics it creates), ``replication_factor`` (1), ``partition_key``
    ("id", "queue" or a callable), ``commit_interval`` (0.2 s), ``session_timeout`` (10 s),
    ``max_message_size``, ``request_timeout`` (30 s), ``connect_timeout`` (10 s).
    """

    # A consumer that dies leaves its uncommitted records to the next owner of the partition
    # (nothing is lost, their count raised by the marks of _kafka_redelivery.py), but only
    # once the group drops it, and a rebalance may also hand a live consumer's unfinished
    # records to another: not the lease the flag stands for.
    capabilities = BrokerCapabilities(
        durable=True, redelivers_lost=False, notifies=True, priorities=False, delayed_delivery=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.settings: KafkaSettings = parse_kafka_url(url, options)
        self._producer: Any = None
        self._admin: Any = None
        self._topics: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._sessions: set[ConsumerSession] = set()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.settings.bootstrap,
            "request_timeout_ms": int(self.settings.request_timeout * 1000),
        }

    async def connect(self) -> None:
        if self._producer is not None:
            return
        self._stopping = False
        s = self.settings
        producer = AIOKafkaProducer(acks="all", max_request_size=s.max_message_size + 4096, **self._common())
        admin = AIOKafkaAdminClient(**self._common())
        try:
            await self._deadline("connect", producer.start(), s.connect_timeout)
            await self._deadline("connect", admin.start(), s.connect_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        self._producer, self._admin = producer, admin

    async def aclose(self) -> None:
        """Close the consumers left (committing what was settled), then the producer."""
        self._stopping = True  # unsettled deliveries stay uncommitted: the group hands them on
        for session in self._sessions:
            session.wakeup.set()
        await asyncio.gather(*self._closing, return_exceptions=True)
        producer, admin, self._producer, self._admin = self._producer, self._admin, None, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await self._deadline("close", producer.stop())
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def __aenter__(self) -> KafkaBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _deadline(self, what: str, call: Awaitable[T], timeout: float | None = None) -> T:
        """``call`` within ``timeout`` (default: the request timeout), Kafka errors translated."""
        limit = self.settings.request_timeout if timeout is None else timeout
        where = ",".join(self.settings.bootstrap)
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError:
            host, _, port = self.settings.bootstrap[0].rpartition(":")
            peer = await describe_peer(host, int(port), _HELLO, expected=("Kafka", _is_kafka_reply))
            raise BrokerConnectionError(
                f"Kafka {what} at {where} did not finish within {limit:g}s ({peer})"
            ) from None
        except KafkaConnectionError as exc:
            raise BrokerConnectionError(f"Kafka {what} at {where} failed: {describe_error(exc)}") from exc
        except KafkaError as exc:
            raise BrokerError(f"Kafka {what} failed: {describe_error(exc, with_type=True)}") from exc

    def _live(self) -> Any:
        if self._producer is None:
            raise BrokerConnectionError("the kafka:// broker is not connected (call connect() first)")
        return self._producer

    async def _ensure(self, topics: set[str], partitions: int | None = None) -> None:
        missing = sorted(topics - self._topics)
        if not missing:
            return
        self._live()
        count = partitions or self.settings.partitions
        new = [NewTopic(t, count, self.settings.replication_factor) for t in missing]
        reply = await self._deadline("create_topics", self._admin.create_topics(new))
        for topic, code, message in reply.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                raise BrokerError(f"Kafka refused to create topic {topic!r}: {message} (error {code})")
        self._topics.update(missing)

    async def _ensure_marks(self, topics: list[str]) -> None:
        """Each work topic's marks topic (_kafka_redelivery.py), with as many partitions."""
        if all(t + MARKS in self._topics for t in topics):
            return
        counts: dict[str, int] = {}
        for partition in await self._partitions(topics):
            counts[partition.topic] = counts.get(partition.topic, 0) + 1
        for topic, count in counts.items():
            await self._ensure({topic + MARKS}, count)

    # -- producing ---------------------------------------------------------------------------

    def _record(self, message: OutgoingMessage, *, count: int = 0) -> tuple[str, bytes, bytes, Headers]:
        """(topic, key, value, headers) of ``message``: its delay topic while its eta is ahead."""
        s = self.settings
        headers: Headers = [(H_ID, message.id.encode())]
        if count:
            headers.append((H_COUNT, str(count).encode()))
        topic = s.topic(message.queue)
        if message.eta is not None and message.eta > time.time():
            topic += DELAY
            headers.append((H_ETA, repr(message.eta).encode()))
        body = bytes(message.body)
        size = len(body) + sum(len(k) + len(v) for k, v in headers)
        if size > s.max_message_size:
            raise MessageTooLargeError(
                f"message {message.id} for queue {message.queue!r} is {size} bytes;"
                f" the kafka:// broker takes at most {s.max_message_size} (max_message_size)"
            )
        return topic, s.key(message), body, headers

    def _dead_record(
        self, message_id: str, queue: str, body: bytes, reason: str
    ) -> tuple[str, bytes, bytes, Headers]:
        headers: Headers = [
            (H_ID, message_id.encode()),
            (H_REASON, reason.encode()),
            (H_DEAD_AT, repr(time.time()).encode()),
        ]
        return self.settings.topic(queue, DEAD), message_id.encode(), body, headers

    async def _produce(
        self, records: Sequence[tuple[str, bytes, bytes, Headers]], create_partitions: int | None = None
    ) -> None:
        producer = self._live()
        await self._ensure({topic for topic, *_ in records}, create_partitions)
        # Sent in order (one partition keeps it), acknowledged by every in-sync replica.
        sends = [
            await producer.send(t, value, key=key, headers=headers) for t, key, value, headers in records
        ]
        await self._deadline("produce", asyncio.gather(*sends))

    async def publish(self, message: OutgoingMessage) -> None:
        await self.publish_many([message])

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        records = [self._record(m) for m in messages]  # every size checked before any is sent
        if records:
            await self._produce(records)

    async def _move(self, target: str, record: Any) -> None:
        """A delay record whose eta came: produce it to its work topic (headers but the eta)."""
        headers = [(k, bytes(v)) for k, v in record.headers or () if k != H_ETA]
        await self._produce([(target, record.key or b"", bytes(record.value or b""), headers)])

    # -- consuming ---------------------------------------------------------------------------

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        names = check_consume(queues, prefetch)
        s = self.settings
        by_topic = {s.topic(q): q for q in names}
        topics = [*by_topic, *(t + DELAY for t in by_topic)]
        await self._ensure(set(topics))
        await self._ensure_marks(list(by_topic))
        session_ms = int(s.session_timeout * 1000)
        session = ConsumerSession(
            topics,
            self._move,
            commit_interval=s.commit_interval,
            group_id=s.group_id,
            session_timeout_ms=session_ms,
            # A join waits for the members of the last generation: bound that by the session too.
            rebalance_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 10),
            # A worker whose prefetch is full of long tasks fetches nothing for as long as they
            # run; liveness is the heartbeat's (session_timeout), not the time between fetches.
            max_poll_interval_ms=86_400_000,
            # Some servers hold a fetch for its whole max wait even when records are there.
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=s.max_message_size + 65536,
            **self._common(),
        )
        await self._deadline("consumer start", session.start(s.connect_timeout + s.session_timeout))
        try:
            while True:
                while not (session.buffer and session.out < prefetch):
                    try:
                        await session.fill(prefetch)  # a fetch is a long poll of one second
                    except KafkaError as exc:
                        raise BrokerError(
                            f"Kafka fetch failed: {describe_error(exc, with_type=True)}"
                        ) from exc
                lease, record = session.buffer.popleft()
                session.out += 1
                yield _KafkaDelivery(self, session, lease, record, by_topic[record.topic])
        finally:
            # Deliveries already yielded are still settled (a stopping worker finishes its
            # tasks): the session stays a group member and commits them, then leaves.
            closing = asyncio.create_task(self._close_settled(session), name="asyncq.kafka.close")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close_settled(self, session: ConsumerSession) -> None:
        session.buffer.clear()  # fetched, never yielded: left uncommitted for the next owner
        self._sessions.add(session)
        try:
            while session.out > 0 and not self._stopping:
                session.wakeup.clear()
                await session.wakeup.wait()
        finally:
            self._sessions.discard(session)
            await session.close(self.settings.request_timeout)

    # -- inspection --------------------------------------------------------------------------

    async def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        found = await self._deadline("describe_topics", self._admin.describe_topics(topics))
        return [
            TopicPartition(t["topic"], p["partition"])
            for t in found
            if not t.get("error_code")
            for p in t.get("partitions", [])
        ]

    def _inspector(self, **config: Any) -> Any:
        return AIOKafkaConsumer(enable_auto_commit=False, **self._common(), **config)

    async def _lag(self, queue: str) -> tuple[Any, dict[TopicPartition, int], int]:
        """A started group-less inspector, each partition's end offset, and the group's lag."""
        self._live()
        topic = self.settings.topic(queue)
        inspector = self._inspector(group_id=None, fetch_max_wait_ms=100)
        try:  # a start that fails or times out has opened connections too: stop them
            await self._deadline("inspect", inspector.start())
            partitions = await self._partitions([topic, topic + DELAY])
            if not partitions:
                return inspector, {}, 0
            starts = await self._deadline("beginning_offsets", inspector.beginning_offsets(partitions))
            ends = await self._ends(inspector, partitions, starts)
            committed = await self._deadline("committed", self._committed(partitions))
        except BaseException:
            with contextlib.suppress(Exception):
                await inspector.stop()
            raise
        lag = sum(ends[p] - max(starts[p], committed[p]) for p in partitions)
        return inspector, ends, lag

    async def _committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offset of each partition (-1: none), all in one request.

        A consumer asks for one partition at a time; the admin client asks for all at once but
        does not retry, so a busy coordinator (a retriable error) is asked again here.
        """
        while True:
            try:
                found = await self._admin.list_consumer_group_offsets(
                    self.settings.group_id, partitions=partitions
                )
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                await asyncio.sleep(0.1)
                continue
            return {p: found[p].offset if p in found else -1 for p in partitions}

    async def _ends(
        self, reader: Any, partitions: list[TopicPartition], starts: dict[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        """Each partition's end offset: the high watermark of one fetch near the reported end.

        Some Kafka-protocol servers (Tansu's memory storage) report the end of a partition
        behind records produced in one batch, while the fetch's high watermark is right. The
        fetch starts one record before the reported end where ``starts`` shows there is one,
        so that it returns at once instead of waiting out its long poll. A server whose
        fetches carry no high watermark is read until a fetch finds nothing.
        """
        ends: dict[TopicPartition, int] = dict(
            await self._deadline("end_offsets", reader.end_offsets(partitions))
        )
        reader.assign(partitions)
        for partition in partitions:
            first = ends[partition] if starts is None else starts[partition]
            reader.seek(partition, max(first, ends[partition] - 1))
        while True:
            batches = await self._deadline("fetch", reader.getmany(timeout_ms=100))
            for partition, batch in batches.items():
                ends[partition] = max(ends[partition], batch[-1].offset + 1)
            marks = [reader.highwater(partition) for partition in partitions]
            for partition, mark in zip(partitions, marks, strict=True):
                ends[partition] = max(ends[partition], mark or 0)
            if None not in marks or not any(batches.values()):
                return ends

    async def queue_length(self, queue: str) -> int:
        """Consumer lag of the group on the queue's topic and its delay topic."""
        inspector, _, lag = await self._lag(queue)
        await asyncio.shield(inspector.stop())  # a cancelled caller still closes its connections
        return lag

    async def purge(self, queue: str) -> int:
        """Move the group's offsets to the end (no consumer of the group may be running)."""
        inspector, ends, lag = await self._lag(queue)
        await inspector.stop()
        if ends:
            await self._commit_as_member(queue, ends)
        return lag

    async def _commit_as_member(self, queue: str, ends: dict[TopicPartition, int]) -> None:
        """Join the group, and once it holds every partition, commit ``ends`` and leave.

        A member's commit, not a group-less one: some servers refuse the latter for a group
        with a past generation. With other consumers of the group running it never holds
        every partition, and gives up after a few session timeouts.
        """
        s = self.settings
        topics = sorted({p.topic for p in ends})
        session_ms = int(s.session_timeout * 1000)
        member = self._inspector(
            group_id=s.group_id,
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 10),
        )
        member.subscribe(topics)
        limit = 3 * s.session_timeout + s.connect_timeout
        try:
            await self._deadline("join", member.start(), limit)
            async with asyncio.timeout(limit):
                while set(member.assignment()) != set(ends):
                    await member.getmany(timeout_ms=100, max_records=1)  # keeps the join going
                    for partition in member.assignment():  # what it may have read is not consumed
                        member.seek(partition, ends[partition])
                await member.commit(ends)
        except TimeoutError:
            raise BrokerError(f"cannot purge {queue!r} while consumers of group {s.group_id!r} run") from None
        except KafkaError as exc:
            raise BrokerError(
                f"Kafka purge of {queue!r} failed: {describe_error(exc, with_type=True)}"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await self._deadline("leave", member.stop())

    # -- dead letters ------------------------------------------------------------------------

    async def _read_dead(self, queue: str) -> list[tuple[TopicPartition, Any]]:
        """Every dead letter of ``queue`` not taken out by a tombstone, oldest first."""
        self._live()
        topic = self.settings.topic(queue, DEAD)
        partitions = await self._partitions([topic])
        if not partitions:
            return []
        reader = self._inspector(group_id=None, fetch_max_wait_ms=100)
        records: dict[str, tuple[TopicPartition, Any]] = {}
        removed: set[str] = set()
        try:
            await self._deadline("inspect", reader.start())
            ends = await self._ends(reader, partitions)
            await reader.seek_to_beginning(*partitions)
            while [p for p in partitions if await reader.position(p) < ends[p]]:
                batches = await self._deadline("fetch", reader.getmany(timeout_ms=1000))
                for partition, batch in batches.items():
                    for record in batch:
                        gone = header(record, H_REMOVED)
                        if gone is not None:
                            removed.add(gone)
                        else:
                            records[f"{partition.partition}:{record.offset}"] = (partition, record)
        finally:
            await reader.stop()
        live = [item for place, item in records.items() if place not in removed]
        live.sort(key=lambda item: float(header(item[1], H_DEAD_AT) or 0))
        return live

    def _letter(self, queue: str, record: Any) -> DeadLetter:
        return DeadLetter(
            header(record, H_ID) or "",
            queue,
            bytes(record.value or b""),
            header(record, H_REASON) or "",
            float(header(record, H_DEAD_AT) or 0),
        )

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        return [self._letter(queue, record) for _, record in (await self._read_dead(queue))[:limit]]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        for _, record in await self._read_dead(queue):
            if header(record, H_ID) == message_id:
                return self._letter(queue, record)
        return None

    async def _take_out(self, queue: str, letters: list[tuple[TopicPartition, Any]], *, requeue: bool) -> int:
        """Requeue (or drop) ``letters``, then write their tombstones."""
        if requeue and letters:
            fresh = [OutgoingMessage(header(r, H_ID) or "", queue, bytes(r.value or b"")) for _, r in letters]
            await self.publish_many(fresh)
        topic = self.settings.topic(queue, DEAD)
        stones = [(topic, b"", b"", [(H_REMOVED, f"{p.partition}:{r.offset}".encode())]) for p, r in letters]
        if stones:
            await self._produce(stones, create_partitions=1)
        return len(letters)

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        found = [item for item in await self._read_dead(queue) if header(item[1], H_ID) == message_id]
        return await self._take_out(queue, found[:1], requeue=True) > 0

    async def requeue_dead_letters(self, queue: str) -> int:
        return await self._take_out(queue, await self._read_dead(queue), requeue=True)

    async def purge_dead_letters(self, queue: str) -> int:
        return await self._take_out(queue, await self._read_dead(queue), requeue=False)
