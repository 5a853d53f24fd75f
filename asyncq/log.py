"""Logging support: the running task's context on every record, and one JSON object per line.

:class:`TaskContextFilter` reads the context of the task running in the current coroutine or
thread (the contextvar behind :func:`asyncq.current_task`) and sets ``task_id``, ``task_name``,
``queue``, ``worker`` and ``retries`` on each record (None outside a task). Add it to a
*handler*, so that records propagated from every logger pass through it. :class:`JSONFormatter`
writes a record as one JSON object, with those fields when a task is running.
``asyncq run --log-format json`` installs both; in your own configuration::

    handler = logging.StreamHandler()
    handler.addFilter(asyncq.log.TaskContextFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(task_name)s[%(task_id)s] %(message)s"))

or, with :func:`logging.config.dictConfig`, ``{"()": "asyncq.log.TaskContextFilter"}`` under
``filters`` and ``{"()": "asyncq.log.JSONFormatter"}`` under ``formatters``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final, Literal

from asyncq.request import _current

__all__ = ["TASK_FIELDS", "JSONFormatter", "TaskContextFilter", "configure_logging", "task_fields"]

#: The record attributes :class:`TaskContextFilter` sets.
TASK_FIELDS: Final = ("task_id", "task_name", "queue", "worker", "retries")
LOG_FORMATS: Final = ("text", "json")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def task_fields() -> dict[str, Any] | None:
    """The running task's id, name, queue, worker and retries; None outside a task."""
    entry = _current.get()
    if entry is None:
        return None
    request = entry[1]
    return {
        "task_id": request.id,
        "task_name": request.task,
        "queue": request.delivery_info.get("queue"),
        "worker": request.hostname or None,
        "retries": request.retries,
    }


class TaskContextFilter(logging.Filter):
    """Sets ``task_id``, ``task_name``, ``queue``, ``worker`` and ``retries`` on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields (None outside a task); never drops a record."""
        fields = task_fields()
        for name in TASK_FIELDS:
            # A record that already has them (e.g. passed through another handler) keeps its own.
            if not hasattr(record, name):
                setattr(record, name, None if fields is None else fields[name])
        return True


class JSONFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message, task fields, error."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line (newlines inside values are escaped)."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {name: getattr(record, name) for name in TASK_FIELDS if hasattr(record, name)}
        if not fields or all(value is None for value in fields.values()):
            fields = task_fields() or {}
        if fields.get("task_id") is not None:
            data.update(fields)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)


def configure_logging(level: int | str = logging.INFO, log_format: Literal["text", "json"] = "text") -> None:
    """Log to stderr at ``level``, as text or JSON lines, with the task context on every record.

    Replaces the root logger's handlers: meant for a worker or beat process's start-up.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use text or json")
    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
