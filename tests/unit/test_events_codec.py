"""Event hooks -> batch -> events: what an emitter records is what a reader gets (docs/protocol.md)."""

from __future__ import annotations

import gc
import json

import pytest

from asyncq.events import EventEmitter, codec, decode_batch
from asyncq.events.memory import MemoryEventBus
from asyncq.exceptions import SerializationError
from asyncq.message import Message


async def _batch(emit: object, *, include_args: bool) -> bytes:
    bus = MemoryEventBus()
    reader = await bus.subscribe()
    emitter = EventEmitter(bus, "host:1", include_args=include_args, flush_interval=1.0)
    emit(emitter)  # type: ignore[operator]
    await emitter.flush()
    batch = await anext(reader)
    await reader.aclose()
    return batch


async def test_round_trip_flattens_each_tasks_events_in_time_order() -> None:
    first = Message(id='a"1', task="t.add", args=[1, "x"], kwargs={"k": None}, queue="q", root_id="r")
    again = Message(id='a"1', task="t.add", queue="q", retries=1, eta=1000.5, root_id="r", parent_id="p")

    def emit(emitter: EventEmitter) -> None:
        emitter.worker_event(codec.ONLINE, active=0, processed=0, queues=["q"])
        emitter.task_received(first)
        emitter.task_started(first)
        emitter.task_retried(first, KeyError("once"), 1000.5)
        emitter.task_received(again)
        emitter.task_started(again)
        emitter.task_failed(again, ValueError("bad\nthing"), 0.25)
        emitter.task_rejected(again, "nope", False)
        emitter.task_dead_lettered(None, "undecodable", task_id="m", queue="q")

    data = await _batch(emit, include_args=True)
    json.loads(data)  # valid JSON
    events = decode_batch(data)
    assert [e["type"] for e in events] == [
        "worker-online",
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-started",
        "task-failed",
        "task-rejected",
        "task-dead-lettered",
    ]
    assert all(e["hostname"] == "host:1" and isinstance(e["timestamp"], float) for e in events)
    online, received, started, retried, received2, _, failed, rejected, dead = events
    assert online["sw_ident"] == "asyncq" and online["queues"] == ["q"]
    assert {k: v for k, v in received.items() if k not in ("timestamp", "pid")} == {
        "hostname": "host:1",
        "type": "task-received",
        "uuid": 'a"1',
        "name": "t.add",
        "queue": "q",
        "retries": 0,
        "root_id": "r",
        "parent_id": None,
        "args": [1, "x"],
        "kwargs": {"k": None},
    }
    assert "args" not in started and started["root_id"] == "r"  # arguments only when taken
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
    assert (dead["uuid"], dead["name"], dead["queue"], dead["reason"]) == ("m", None, "q", "undecodable")


async def test_the_common_case_and_arguments_only_when_asked() -> None:
    message = Message(id="1", task="t", args=[object()])

    def emit(emitter: EventEmitter) -> None:
        emitter.task_received(message)
        emitter.task_started(message)
        emitter.task_succeeded(message, 0.125)

    events = decode_batch(await _batch(emit, include_args=False))
    assert [e["type"] for e in events] == ["task-received", "task-started", "task-succeeded"]
    assert "args" not in events[0] and events[2]["runtime"] == 0.125
    assert events[0]["timestamp"] <= events[1]["timestamp"] <= events[2]["timestamp"]
    with_args = decode_batch(await _batch(emit, include_args=True))
    assert with_args[0]["args"] == "<not JSON>"


def test_buffered_events_are_no_objects_for_the_garbage_collector() -> None:
    emitter = EventEmitter(MemoryEventBus(), "h", include_args=True, flush_interval=1.0)
    message = Message(id="1", task="t", queue="q", args=[[1, 2]], eta=5.0)
    emitter.task_received(message)
    emitter.task_succeeded(message, 0.1)
    emitter.task_failed(message, ValueError("x"), 0.1)  # a rare one may hold a tuple
    assert sum(gc.is_tracked(value) for value in emitter._buffer) <= 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"v": 3, "tasks": []}', "unsupported event batch version 3"),
        (b'{"v": 1, "tasks": [{"uuid": "x"}]}', "malformed task entry"),
        (b'{"v": 2, "t0": 0, "tasks": {"uuid": ["x"], "type": 1, "time": [0, 1]}}', "malformed event batch"),
    ],
)
def test_bad_batches_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        decode_batch(data)
