"""The Celery protocol codec: envelopes, timestamps, result and exception records."""

from __future__ import annotations

import base64
import json

import pytest

from asyncq.celery.protocol import (
    CeleryTask,
    decode_envelope,
    encode_envelope,
    exception_record,
    follow_ups,
    from_iso,
    rebuild_exception,
    result_meta,
    to_iso,
)
from asyncq.exceptions import SerializationError


def test_envelope_round_trip_keeps_what_celery_reads() -> None:
    task = CeleryTask(
        id="t-1",
        task="pkg.add",
        args=[1, 2],
        kwargs={"x": 3},
        eta=1_700_000_000.5,
        expires=1_700_000_100.0,
        retries=2,
        root_id="r",
        parent_id="p",
        headers={"custom": "v"},
        priority=3,
    )
    raw = encode_envelope(task, queue="celery")
    envelope = json.loads(raw)
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert envelope["headers"]["eta"] == "2023-11-14T22:13:20.500000+00:00"
    assert json.loads(base64.b64decode(envelope["body"]))[2]["callbacks"] is None
    _, back = decode_envelope(raw)
    assert (back.id, back.task, back.args, back.kwargs) == ("t-1", "pkg.add", [1, 2], {"x": 3})
    assert (back.eta, back.expires, back.retries) == (1_700_000_000.5, 1_700_000_100.0, 2)
    assert (back.root_id, back.parent_id, back.priority) == ("r", "p", 3)
    assert back.headers["custom"] == "v"


def test_naive_celery_timestamps_are_utc() -> None:
    assert from_iso("2023-11-14T22:13:20") == 1_700_000_000.0
    assert from_iso(None) is None
    assert to_iso(None) is None
    with pytest.raises(SerializationError, match="bad Celery timestamp"):
        from_iso("next tuesday")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", "not a kombu message"),
        (json.dumps({"headers": {}, "body": ""}).encode(), "no task/id header"),
        (
            json.dumps(
                {"headers": {"task": "t", "id": "1"}, "content-type": "application/x-python-serialize"}
            ),
            "not accepted",
        ),
        (json.dumps({"headers": {"task": "t", "id": "1"}, "body": "[1]"}), "undecodable Celery body"),
    ],
)
def test_bad_envelopes_are_refused_in_one_line(raw: bytes | str, error: str) -> None:
    with pytest.raises(SerializationError, match=error):
        decode_envelope(raw)


def test_exception_records_rebuild_importable_classes_only() -> None:
    record = exception_record(KeyError("k"))
    assert record == {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"}
    rebuilt = rebuild_exception(record)
    assert type(rebuilt) is KeyError and rebuilt.args == ("k",)
    # A record naming a callable that is not an exception class must not call it.
    sneaky = rebuild_exception({"exc_type": "system", "exc_message": ["id"], "exc_module": "os"})
    assert not isinstance(sneaky, OSError) and type(sneaky).__name__ == "system"
    unknown = rebuild_exception({"exc_type": "Gone", "exc_message": "m", "exc_module": "not.imported"})
    assert type(unknown).__name__ == "Gone" and unknown.args == ("m",)


def test_failure_meta_carries_record_and_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        meta = result_meta("t-1", "FAILURE", exc=exc)
    assert meta["result"]["exc_type"] == "ValueError"
    assert "ValueError: bad" in meta["traceback"] and meta["date_done"]
    assert result_meta("t-1", "STARTED")["date_done"] is None


def test_follow_ups_are_celerys_links_errbacks_and_next_chain_step() -> None:
    link = {"task": "t.record", "args": ["tag"], "options": {"queue": "q2", "task_id": "l-1"}}
    frozen = {"task": "t.ping", "args": [1], "immutable": True}
    steps = [{"task": "t.last", "args": []}, {"task": "t.next", "args": [2]}]  # last-first, as Celery
    errback = {"task": "t.on_error", "args": []}
    message = CeleryTask(
        id="p-1",
        task="t.add",
        root_id="r-1",
        reply_to="caller",
        embed={"callbacks": [link, frozen], "errbacks": [errback], "chain": steps},
    )
    sent = follow_ups(message, succeeded=True, result=5)
    assert [(queue, f.task, f.args) for queue, f in sent] == [
        ("q2", "t.record", [5, "tag"]),
        ("", "t.ping", [1]),
        ("", "t.next", [5, 2]),
    ]
    assert sent[0][1].id == "l-1" and {f.parent_id for _, f in sent} == {"p-1"}
    assert {f.root_id for _, f in sent} == {"r-1"} and {f.reply_to for _, f in sent} == {"caller"}
    assert sent[2][1].embed["chain"] == [steps[0]] and sent[1][1].embed["chain"] is None
    [(_, failed)] = follow_ups(message, succeeded=False)
    assert failed.task == "t.on_error" and failed.args == ["p-1"]


def test_follow_ups_refuse_nested_canvas() -> None:
    group = {"task": "celery.group", "subtask_type": "group", "kwargs": {"tasks": []}}
    message = CeleryTask(id="p-1", task="t.add", embed={"callbacks": [group]})
    with pytest.raises(SerializationError, match="only plain task signatures"):
        follow_ups(message, succeeded=True, result=1)
