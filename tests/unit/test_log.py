"""asyncq.log: the task context on records, and one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from asyncq.log import TASK_FIELDS, JSONFormatter, TaskContextFilter, configure_logging
from asyncq.task import Request, _current


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("tests.unit.test_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def running(request: Request) -> object:
    return _current.set((object(), request))  # type: ignore[arg-type]  # only the request is read


def test_records_inside_a_task_carry_its_context(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    request = Request(id="t-1", task="tasks.add", retries=2, delivery_info={"queue": "fast"}, hostname="h:1")
    token = running(request)
    try:
        logger.info("adding %d and %d", 2, 3)
    finally:
        _current.reset(token)  # type: ignore[arg-type]
    logger.info("outside")
    inside, outside = records(stream)
    assert inside["message"] == "adding 2 and 3" and inside["level"] == "INFO"
    assert {k: inside[k] for k in TASK_FIELDS} == {
        "task_id": "t-1",
        "task_name": "tasks.add",
        "queue": "fast",
        "worker": "h:1",
        "retries": 2,
    }
    assert outside["message"] == "outside"
    assert not set(TASK_FIELDS) & set(outside)


def test_exceptions_and_newlines_stay_on_one_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("two\nlines")
    assert len(stream.getvalue().splitlines()) == 1
    (record,) = records(stream)
    assert record["message"] == "two\nlines"
    assert "ValueError: bad" in str(record["exc_info"])


def test_the_filter_makes_the_fields_usable_in_text_formats() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert TaskContextFilter().filter(record)
    assert logging.Formatter("%(task_name)s[%(task_id)s] %(message)s").format(record) == "None[None] hello"


def test_configure_logging_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging(logging.INFO, "xml")  # type: ignore[arg-type]
