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


async def test_task_waiting_carries_its_limit_key_and_wait() -> None:
    message = Message(id="w1", task="t.report", queue="q")

    def emit(emitter: EventEmitter) -> None:
        emitter.task_waiting(message, "concurrency_key", "acme", None)
        emitter.task_waiting(message, "rate_limit", None, 0.125)

    keyed, paced = decode_batch(await _batch(emit, include_args=False))
    assert (keyed["type"], keyed["limit"], keyed["key"], keyed["uuid"]) == (
        "task-waiting",
        "concurrency_key",
        "acme",
        "w1",
    )
    assert "wait" not in keyed
    assert (paced["limit"], paced["wait"]) == ("rate_limit", 0.125) and "key" not in paced


async def test_a_tasks_usual_events_are_one_row_and_a_running_task_continues_in_the_next_batch() -> None:
    bus = MemoryEventBus()
    reader = await bus.subscribe()
    emitter = EventEmitter(bus, "host:1", include_args=False, flush_interval=1.0)
    done = [Message(id=f"id-{i}", task="t.add", queue="q", root_id=f"id-{i}") for i in range(3)]
    running = Message(id="long", task="t.long", queue="q", root_id="r", parent_id="p")
    emitter.task_received(running)
    emitter.task_started(running)
    for message in done:
        emitter.task_received(message)
        emitter.task_started(message)
        emitter.task_succeeded(message, 0.002)
    await emitter.flush()
    emitter.task_succeeded(running, 1.5)
    await emitter.flush()
    first, second = await anext(reader), await anext(reader)
    table = json.loads(first)["tasks"]
    assert table["uuid"] == ["long", "id-0", "id-1", "id-2"] and table["type"] == codec.RECEIVED
    assert table["succeeded"][0] is None and table["queue"] == "q"  # one value for every row
    events = decode_batch(first)
    assert [e["type"] for e in events] == ["task-received", "task-started"] + [
        "task-received",
        "task-started",
        "task-succeeded",
    ] * 3
    assert [e["runtime"] for e in events if e["type"] == "task-succeeded"] == [0.002] * 3
    (end,) = decode_batch(second)  # only its end, with all that describes the task
    assert {k: end[k] for k in ("type", "uuid", "name", "queue", "root_id", "parent_id", "runtime")} == {
        "type": "task-succeeded",
        "uuid": "long",
        "name": "t.long",
        "queue": "q",
        "root_id": "r",
        "parent_id": "p",
        "runtime": 1.5,
    }
    assert end["timestamp"] >= events[1]["timestamp"]


async def test_strings_that_need_escaping_or_are_not_ascii_survive_the_column_joins() -> None:
    names = ['t."quoted"', "t.ünïcode", "t.back\\slash", "t.tab\there", "t.plain"]
    messages = [Message(id=f"{i}\u2028", task=name, queue="q\x01") for i, name in enumerate(names)]

    def emit(emitter: EventEmitter) -> None:
        for message in messages:
            emitter.task_received(message)

    events = decode_batch(await _batch(emit, include_args=False))
    assert [(e["uuid"], e["name"], e["queue"], e["root_id"]) for e in events] == [
        (m.id, m.task, "q\x01", None) for m in messages
    ]


def test_a_version_1_batch_is_still_read() -> None:
    data = json.dumps(
        {
            "v": 1,
            "hostname": "web-1:4242",
            "pid": 4242,
            "t0": 1764633600.101,
            "tasks": [
                {
                    "uuid": "0b6d",
                    "name": "tasks.add",
                    "queue": "default",
                    "retries": 0,
                    "root_id": "0b6d",
                    "parent_id": None,
                    "events": [["task-received", 0], ["task-started", 950], ["task-succeeded", 1900, 870]],
                }
            ],
            "events": [{"type": "worker-heartbeat", "timestamp": 1764633600.2, "active": 3}],
        }
    ).encode()
    events = decode_batch(data)
    kinds = [e["type"] for e in events]
    assert kinds == ["task-received", "task-started", "task-succeeded", "worker-heartbeat"]
    assert events[2]["runtime"] == 0.00087 and events[2]["timestamp"] == 1764633600.1029
    assert all(e["hostname"] == "web-1:4242" and e["pid"] == 4242 for e in events)


async def test_a_full_buffer_drops_its_oldest_rows_and_later_events_still_find_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryEventBus()
    reader = await bus.subscribe()
    limit = 100
    emitter = EventEmitter(bus, "host:1", include_args=False, flush_interval=1.0, buffer_limit=limit)
    messages = [Message(id=str(i), task="t", queue="q") for i in range(limit + 1)]
    for message in messages:
        emitter.task_received(message)  # the last one's row moves when the oldest are dropped
    emitter.task_started(messages[-1])
    await emitter.flush()
    events = decode_batch(await anext(reader))
    assert len(events) == limit + 1 - limit // 10 + 1 and events[0]["uuid"] == str(limit // 10)
    last = [(e["type"], e["uuid"]) for e in events[-2:]]
    assert last == [("task-received", "100"), ("task-started", "100")]
    assert f"dropped {limit // 10} events" in caplog.text


async def test_an_empty_reason_is_still_a_field() -> None:
    message = Message(id="1", task="t", queue="q")

    def emit(emitter: EventEmitter) -> None:
        emitter.task_received(message)
        emitter.task_revoked(message, "")

    events = decode_batch(await _batch(emit, include_args=False))
    assert [(e["type"], e.get("reason")) for e in events] == [("task-received", None), ("task-revoked", "")]
