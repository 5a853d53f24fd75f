"""Hand-built publish frames and confirm decoding against pamqp's codec, byte for byte."""

from __future__ import annotations

import asyncio
import datetime
import decimal

import pytest
from pamqp import encode, frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from asyncq._amqp.confirms import Confirms, PublishNacked, PublishReturned
from asyncq._amqp.content import field_table, publish_frames
from asyncq._amqp.frames import FrameReader, ServerAck
from asyncq._amqp.header import ContentHead
from asyncq._amqp.protocol import LeanConnection

TABLES = [
    {},
    {"asyncq-task": "3f" * 16, "asyncq-final": True, "CC": ["asyncq.rpc.abc"]},
    {"small": 5, "negative": -100, "short": 30000, "ushort": 60000, "int": 2**31 - 1, "uint": 2**32 - 1},
    {"long": 2**40, "min": -(2**63), "none": None, "false": False},
    {"nested": {"a": [1, "two", None, {"b": True}]}, "ünïcode": "välue"},
    {"float": 1.5, "decimal": decimal.Decimal("1.25"), "bytes": bytearray(b"\x00\xce")},
    {"when": datetime.datetime(2026, 12, 2, 22, 0, 0, tzinfo=datetime.UTC)},
]


@pytest.mark.parametrize("table", TABLES)
def test_field_table_is_pamqps_encoding(table: dict[str, object]) -> None:
    assert field_table(table) == encode.field_table(table)


def pamqp_publish(
    exchange: str, key: str, body: bytes, properties: Basic.Properties, mandatory: bool, frame_max: int
) -> bytes:
    data = frame.marshal(Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory), 1)
    data += frame.marshal(ContentHeader(body_size=len(body), properties=properties), 1)
    room = frame_max - 8
    for start in range(0, len(body), room):
        data += frame.marshal(ContentBody(body[start : start + room]), 1)
    return data


PROPERTIES = [
    Basic.Properties(),
    Basic.Properties(headers={}, delivery_mode=1),
    Basic.Properties(message_id="m1", delivery_mode=2, priority=0),
    Basic.Properties(
        message_id="m1", delivery_mode=2, priority=9, headers={"x-asyncq-eta": 1_700_000_000_000}
    ),
    Basic.Properties(headers={"asyncq-final": False}, delivery_mode=1, expiration="60000", message_id="r"),
    # Properties the hand-built header leaves to pamqp.
    Basic.Properties(content_type="application/json", reply_to="q", correlation_id="c", app_id="a"),
]


@pytest.mark.parametrize("properties", PROPERTIES)
@pytest.mark.parametrize("body", [b"", b"x", b"\xce" * 300, bytes(range(256)) * 40])
@pytest.mark.parametrize("mandatory", [False, True])
def test_publish_frames_are_pamqps(properties: Basic.Properties, body: bytes, mandatory: bool) -> None:
    # A small frame_max splits the larger bodies over several body frames.
    for frame_max in (4096, 131072):
        ours = publish_frames(1, "asyncq", "jobs", body, properties, mandatory=mandatory, frame_max=frame_max)
        assert ours == pamqp_publish("asyncq", "jobs", body, properties, mandatory, frame_max)


def test_too_long_short_string_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        publish_frames(1, "", "q" * 256, b"", Basic.Properties(), mandatory=False, frame_max=4096)


@pytest.mark.parametrize("multiple", [False, True])
def test_reader_decodes_acks_and_nacks(multiple: bool) -> None:
    data = frame.marshal(Basic.Ack(delivery_tag=2**40 + 7, multiple=multiple), 1)
    data += frame.marshal(Basic.Nack(delivery_tag=9, multiple=multiple, requeue=True), 1)
    frames = FrameReader().feed(data)
    ack, nack = (value for _, value in frames)
    assert isinstance(ack, ServerAck) and isinstance(nack, ServerAck)
    assert (ack.delivery_tag, ack.multiple, ack.nack) == (2**40 + 7, multiple, False)
    assert (nack.delivery_tag, nack.multiple, nack.nack) == (9, multiple, True)


async def test_confirms_settle_single_multiple_nack_and_return() -> None:
    loop = asyncio.get_running_loop()
    confirms = Confirms()
    futures = [loop.create_future() for _ in range(6)]
    for index, future in enumerate(futures):
        confirms.add(future, f"m{index}" if index == 4 else None)
    confirms.settle(ServerAck(2, False, False))  # out of order, alone
    assert [f.done() for f in futures] == [False, True, False, False, False, False]
    confirms.settle(ServerAck(3, True, False))  # 1..3
    assert all(f.done() and f.result() is None for f in futures[:3])
    confirms.returned("m4", 312, "NO_ROUTE")  # tag 5, before its ack
    confirms.settle(ServerAck(5, True, True))  # 4..5 nacked: 5 keeps its return
    with pytest.raises(PublishNacked):
        futures[3].result()
    with pytest.raises(PublishReturned, match="312 NO_ROUTE"):
        futures[4].result()
    assert len(confirms) == 1
    lost = ConnectionError("gone")
    confirms.fail_all(lost)
    assert futures[5].exception() is lost
    assert len(confirms) == 0


async def test_confirm_deadlines_fail_only_the_unsettled_publishes_past_theirs() -> None:
    loop = asyncio.get_running_loop()
    confirms = Confirms()
    futures = [loop.create_future() for _ in range(4)]
    earliest = []
    for future, deadline in zip(futures, (10.0, 20.0, 5.0, 30.0), strict=True):
        confirms.add(future, None)
        earliest.append(confirms.watch(future, deadline))
    assert earliest == [10.0, 10.0, 5.0, 5.0]  # what the connection's one timer is set to
    confirms.settle(ServerAck(3, False, False))  # the one due first was confirmed in time
    assert confirms.expire(9.0) == 10.0  # nothing else due yet
    assert not any(f.done() for f in (futures[0], futures[1], futures[3]))
    assert confirms.expire(25.0) == 30.0
    for future in futures[:2]:
        with pytest.raises(TimeoutError):
            future.result()
    assert futures[2].result() is None
    confirms.settle(ServerAck(4, True, False))  # a late ack finds the expired ones done
    assert futures[3].result() is None
    assert confirms.expire(100.0) is None


HEADER_TABLES = [
    *TABLES,
    {"x-death": [{"count": 3, "reason": "expired", "time": datetime.datetime(2026, 1, 1, 0, 0)}]},
    {"ushort": 65535, "byte": 200, "bin": "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")},
]


@pytest.mark.parametrize("table", HEADER_TABLES)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"message_id": "m-1", "priority": 7, "delivery_mode": 2},
        {"expiration": "5", "app_id": "x", "timestamp": datetime.datetime(2026, 5, 1)},
    ],
)
def test_decode_header_reads_what_pamqp_reads(table: dict[str, object], extra: dict[str, object]) -> None:
    properties = Basic.Properties(headers=table or None, **extra)  # type: ignore[arg-type]
    data = frame.marshal(ContentHeader(body_size=1234, properties=properties), 1)
    _, _, expected = frame.unmarshal(data)
    assert isinstance(expected, ContentHeader)
    ((_, head),) = FrameReader().feed(data)
    assert isinstance(head, ContentHead)
    assert head.body_size == 1234
    assert head.headers == expected.properties.headers
    assert head.message_id == expected.properties.message_id
    assert head.priority == expected.properties.priority


def test_decode_header_of_a_non_utf8_string_gives_bytes() -> None:
    table = {"raw": "x"}
    data = bytearray(frame.marshal(ContentHeader(body_size=0, properties=Basic.Properties(headers=table)), 1))
    data[data.index(b"x")] = 0xFF  # no longer UTF-8
    ((_, head),) = FrameReader().feed(bytes(data))
    assert isinstance(head, ContentHead)
    assert head.headers == {"raw": b"\xff"}


def test_lean_params_take_aiormqs_auth_option() -> None:
    from asyncq._amqp.protocol import LeanParams
    from asyncq.exceptions import ConfigurationError

    assert LeanParams("amqp://u:p@h/", connection_name="n").mechanism == "PLAIN"
    assert LeanParams("amqps://h/?auth=external", connection_name="n").mechanism == "EXTERNAL"
    with pytest.raises(ConfigurationError, match="PLAIN and EXTERNAL"):
        LeanParams("amqp://h/?auth=amqplain", connection_name="n")


class _Sink:
    """A transport that keeps what is written (nothing answers: the confirms never come)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        pass


async def test_a_publish_unconfirmed_by_its_deadline_fails_on_the_connection_timer() -> None:
    loop = asyncio.get_running_loop()
    connection = LeanConnection(lambda message: None, lambda error: None)
    sink = _Sink()
    connection._transport = sink  # type: ignore[assignment]
    connection.confirms = Confirms()
    properties = Basic.Properties(delivery_mode=2, message_id="m")
    late = connection.publish("", "q", b"1", properties, deadline=loop.time() + 60)
    soon = connection.publish("", "q", b"2", properties, deadline=loop.time() + 0.05)
    assert connection._expiry_at < loop.time() + 1  # the one timer follows the earliest deadline
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(soon, 5)
    assert not late.done()
    assert connection._expiry is not None  # armed again, for the later deadline
    connection.confirms.settle(ServerAck(1, False, False))
    assert late.result() is None
    assert len(sink.written) == 2  # the first at once, the second at the iteration's end
    connection.abort()
    assert connection._expiry is None  # a lost connection leaves no timer behind
