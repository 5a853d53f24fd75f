"""The event batch codec: what emitters write is what readers get back, schema as in docs/protocol.md."""

from __future__ import annotations

import json

import pytest

from asyncq.events import codec
from asyncq.events.codec import decode_batch, encode_batch
from asyncq.exceptions import SerializationError
from asyncq.message import Message


def test_round_trip_flattens_each_tasks_events_in_time_order() -> None:
    first = Message(id='a"1', task="t.add", args=[1, "x"], kwargs={"k": None}, queue="q", root_id="r")
    again = Message(id='a"1', task="t.add", queue="q", retries=1, eta=1000.5, root_id="r", parent_id="p")
    records: list[codec.Record] = [
        (codec.RECEIVED, first, 10.0, None),
        (codec.STARTED, first, 10.5, None),
        (codec.ONLINE, None, 9.0, {"active": 0, "processed": 0, "queues": ["q"]}),
        (codec.RETRIED, first, 11.0, (KeyError("once"), 1000.5)),
        (codec.RECEIVED, again, 12.0, None),
        (codec.FAILED, again, 13.0, (ValueError("bad\nthing"), 0.25)),
        (codec.REJECTED, again, 14.0, ("nope", False)),
        (codec.DEAD_LETTERED, None, 15.0, {"uuid": "m", "name": None, "queue": "q", "reason": "undecodable"}),
    ]
    data = encode_batch("host:1", 42, records, include_args=True)
    json.loads(data)  # valid JSON
    events = decode_batch(data)
    assert [e["type"] for e in events] == [
        "worker-online",
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-failed",
        "task-rejected",
        "task-dead-lettered",
    ]
    assert all(e["hostname"] == "host:1" and e["pid"] == 42 for e in events)
    online, received, started, retried, received2, failed, rejected, dead = events
    assert online["sw_ident"] == "asyncq" and online["queues"] == ["q"]
    assert received == {
        "hostname": "host:1",
        "pid": 42,
        "type": "task-received",
        "timestamp": 10.0,
        "uuid": 'a"1',
        "name": "t.add",
        "queue": "q",
        "retries": 0,
        "root_id": "r",
        "parent_id": None,
        "args": [1, "x"],
        "kwargs": {"k": None},
    }
    assert "args" not in started  # arguments only on task-sent and task-received
    assert (retried["exception_type"], retried["exception_message"], retried["retry_eta"]) == (
        "KeyError",
        "'once'",
        1000.5,
    )
    assert (received2["retries"], received2["eta"], received2["parent_id"]) == (1, 1000.5, "p")
    assert (failed["exception_type"], failed["exception_message"], failed["runtime"]) == (
        "ValueError",
        "bad\nthing",
        0.25,
    )
    assert (rejected["reason"], rejected["requeue"]) == ("nope", False)
    assert (dead["uuid"], dead["name"], dead["reason"]) == ("m", None, "undecodable")


def test_arguments_only_when_asked_and_never_break_a_batch() -> None:
    message = Message(id="1", task="t", args=[object()])
    records: list[codec.Record] = [(codec.SENT, message, 1.0, None), (codec.SUCCEEDED, message, 2.0, 0.1)]
    without = decode_batch(encode_batch("h", 1, records, include_args=False))
    assert "args" not in without[0] and without[1]["runtime"] == 0.1
    with_args = decode_batch(encode_batch("h", 1, records, include_args=True))
    assert with_args[0]["args"] == "<not JSON>"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"v": 2, "tasks": []}', "unsupported event batch version 2"),
        (b'{"v": 1, "tasks": [{"uuid": "x"}]}', "malformed task entry"),
    ],
)
def test_bad_batches_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        decode_batch(data)
