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
