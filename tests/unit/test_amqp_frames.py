"""The lean AMQP frame reader against bytes produced by pamqp's codec."""

from __future__ import annotations

import pytest
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic, Connection
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from asyncq._amqp.frames import Deliver, FrameError, FrameReader, ack_frame
from asyncq._amqp.header import ContentHead


def delivery_bytes(tag: int, body: bytes, *, redelivered: bool = False, chunk: int = 0) -> bytes:
    deliver = Basic.Deliver(
        consumer_tag="asyncq.ctag",
        delivery_tag=tag,
        redelivered=redelivered,
        exchange="ex",
        routing_key="jobs",
    )
    properties = Basic.Properties(message_id=f"m{tag}", priority=3, headers={"x-asyncq-deliveries": 2})
    data = frame.marshal(deliver, 1) + frame.marshal(
        ContentHeader(body_size=len(body), properties=properties), 1
    )
    step = chunk or max(1, len(body))
    for start in range(0, len(body), step):
        data += frame.marshal(ContentBody(body[start : start + step]), 1)
    return data


def check_delivery(
    frames: list[tuple[int, object]], tag: int, body: bytes, *, redelivered: bool = False
) -> None:
    channel, deliver = frames[0]
    assert channel == 1
    assert isinstance(deliver, Deliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == (
        "asyncq.ctag",
        tag,
        redelivered,
    )
    assert (deliver.exchange, deliver.routing_key) == ("ex", "jobs")
    header = frames[1][1]
    assert isinstance(header, ContentHead)
    assert header.body_size == len(body)
    assert header.message_id == f"m{tag}"
    assert header.priority == 3
    assert header.headers == {"x-asyncq-deliveries": 2}
    assert b"".join(value for _, value in frames[2:] if isinstance(value, bytes)) == body


def test_one_delivery_in_one_chunk() -> None:
    frames = FrameReader().feed(delivery_bytes(7, b"hello", redelivered=True))
    assert len(frames) == 3
    check_delivery(frames, 7, b"hello", redelivered=True)


def test_frames_split_at_every_byte() -> None:
    data = delivery_bytes(2**40, b"\xce" * 300, chunk=100)  # 0xCE inside bodies is not a frame end
    reader = FrameReader()
    frames = []
    for i in range(len(data)):
        frames += reader.feed(data[i : i + 1])
    assert len(frames) == 5
    check_delivery(frames, 2**40, b"\xce" * 300)


def test_several_deliveries_and_heartbeats_per_chunk() -> None:
    data = b"".join(delivery_bytes(tag, b"x" * tag) + frame.marshal(Heartbeat(), 0) for tag in range(1, 6))
    reader = FrameReader()
    frames = reader.feed(data[:-3]) + reader.feed(data[-3:])
    assert len(frames) == 5 * 4
    for tag in range(1, 6):
        group = frames[(tag - 1) * 4 : tag * 4]
        check_delivery(group[:3], tag, b"x" * tag)
        assert group[3] == (0, group[3][1])
        assert isinstance(group[3][1], Heartbeat)


def test_empty_body_has_no_body_frame() -> None:
    frames = FrameReader().feed(delivery_bytes(1, b""))
    assert len(frames) == 2
    check_delivery(frames, 1, b"")


def test_other_methods_go_through_pamqp() -> None:
    data = frame.marshal(Connection.Tune(channel_max=0, frame_max=131072, heartbeat=60), 0)
    [(channel, tune)] = FrameReader().feed(data)
    assert channel == 0
    assert isinstance(tune, Connection.Tune)
    assert (tune.frame_max, tune.heartbeat) == (131072, 60)


def test_a_frame_without_its_end_octet_is_refused() -> None:
    data = bytearray(frame.marshal(Heartbeat(), 0))
    data[-1] = 0
    with pytest.raises(FrameError):
        FrameReader().feed(bytes(data))


@pytest.mark.parametrize("multiple", [True, False])
def test_hand_built_ack_matches_pamqp(multiple: bool) -> None:
    expected = frame.marshal(Basic.Ack(delivery_tag=123456789, multiple=multiple), 1)
    assert ack_frame(1, 123456789, multiple) == expected
