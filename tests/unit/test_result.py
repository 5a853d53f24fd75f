"""AsyncResult and GroupResult over a real memory:// backend: states, values, failures, timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from asyncq import App, GroupResult, State
from asyncq.exceptions import SerializationError
from asyncq.exceptions import TimeoutError as ResultTimeoutError
from asyncq.result import decode_record, encode_record, encode_success
from asyncq.serializers import json_dumps, json_loads
from asyncq.testing import memory_app


class Boom(Exception):
    pass


async def store(app: App, task_id: str, **fields: Any) -> None:
    record = encode_record(app.serializers, task_id=task_id, **fields)
    await app.backend.set(task_id, record, final=fields["status"] != State.STARTED, ttl=None)


async def test_unknown_id_is_pending_and_times_out() -> None:
    app = memory_app()
    result = app.AsyncResult("never-sent")
    assert await result.state() == State.PENDING
    assert await result.info() is None
    assert not await result.ready()
    with pytest.raises(ResultTimeoutError, match="never-sent"):
        await result.get(timeout=0)


async def test_success_gives_the_value() -> None:
    app = memory_app()
    await store(app, "ok", status=State.SUCCESS, result={"n": 1})
    result = app.AsyncResult("ok")
    assert await result.get(timeout=1) == {"n": 1}
    assert await result.successful() and await result.ready() and not await result.failed()


async def test_failure_raises_the_task_error_or_returns_it() -> None:
    app = memory_app()
    await store(app, "bad", status=State.FAILURE, exc=Boom("broken"))
    result = app.AsyncResult("bad")
    with pytest.raises(Exception, match="broken"):
        await result.get(timeout=1)
    returned = await result.get(timeout=1, propagate=False)
    assert isinstance(returned, Exception) and "broken" in str(returned)
    assert await result.failed()


async def test_progress_meta_is_the_info_of_a_started_task() -> None:
    app = memory_app()
    await store(app, "busy", status=State.STARTED, meta={"done": 3})
    result = app.AsyncResult("busy")
    assert await result.state() == State.STARTED
    assert await result.info() == {"done": 3}
    assert not await result.ready()


async def test_forget_drops_the_record() -> None:
    app = memory_app()
    await store(app, "gone", status=State.SUCCESS, result=1)
    await app.AsyncResult("gone").forget()
    assert await app.AsyncResult("gone").state() == State.PENDING


async def test_group_result_collects_in_member_order() -> None:
    app = memory_app()
    await store(app, "m2", status=State.SUCCESS, result=2)
    await store(app, "m1", status=State.SUCCESS, result=1)
    group = GroupResult("g", [app.AsyncResult("m1"), app.AsyncResult("m2")], app)
    assert len(group) == 2
    assert await group.get(timeout=1) == [1, 2]
    assert await group.completed_count() == 2


def test_records_round_trip_with_their_task_name() -> None:
    app = memory_app()
    data = encode_record(app.serializers, task_id="t", status=State.SUCCESS, result=[1], task="add")
    record = decode_record(data, app.serializers)
    assert (record.status, record.result, record.is_ready) == (State.SUCCESS, [1], True)


@pytest.mark.parametrize("value", [None, 0, {"n": [1, "two"]}, "text"])
def test_the_success_shortcut_writes_what_encode_record_writes(value: Any) -> None:
    app = memory_app()
    full = json_loads(
        encode_record(app.serializers, task_id="t", status=State.SUCCESS, result=value, retries=2, task="x.y")
    )
    quick = json_loads(encode_success("t", value, 2, "x.y"))
    assert full.pop("date_done") <= quick.pop("date_done")
    assert list(quick.items()) == list(full.items())


@pytest.mark.parametrize(
    ("task_id", "value", "retries", "task"),
    [
        ("t", None, 0, "x.y"),
        ('q"uo\\te\n', [1, {"a": None}], 3, "tâche.ünïcode"),
        ("t", "text", 2, "x\u2028y"),
    ],
)
def test_the_success_shortcut_writes_the_bytes_of_the_generic_encoding(
    task_id: str, value: Any, retries: int, task: str
) -> None:
    app = memory_app()
    quick = encode_success(task_id, value, retries, task)
    record = json_loads(quick)
    generic = {"task_id": task_id, "status": "SUCCESS", "retries": retries, "task": task}
    generic["date_done"] = record["date_done"]
    if value is not None:
        generic["result"] = value
    assert quick == json_dumps(generic)
    assert decode_record(quick, app.serializers).result == value


def test_the_success_shortcut_refuses_what_json_cannot_carry_as_the_generic_encoding_does() -> None:
    with pytest.raises(SerializationError):
        encode_success("t\ud800", 1, 0, "x.y")  # a lone surrogate is not UTF-8
    with pytest.raises(SerializationError):
        encode_success("t", object(), 0, "x.y")
