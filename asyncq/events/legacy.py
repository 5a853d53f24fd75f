"""Reading event batches of version 1 (asyncq before the columnar batch): each task an object.

Kept so that readers of a newer asyncq still understand workers that have not been upgraded;
nothing writes this version any more. Its layout is in docs/protocol.md ("Version 1").
"""

from __future__ import annotations

from typing import Any

from asyncq.exceptions import SerializationError

__all__ = ["decode_v1"]


def decode_v1(batch: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a parsed version-1 batch, each with ``common`` (its hostname and pid)."""
    found: list[dict[str, Any]] = []
    try:
        t0 = float(batch.get("t0") or 0.0)
        for task in batch.get("tasks") or ():
            fields = {key: value for key, value in task.items() if key != "events"}
            args = {key: fields.pop(key) for key in ("args", "kwargs") if key in fields}
            for kind, offset, *details in task["events"]:
                event = {**common, "type": kind, "timestamp": round(t0 + offset / 1e6, 6), **fields}
                if args and kind in ("task-sent", "task-received"):
                    event.update(args)
                if details:
                    extra = details[0]
                    event.update({"runtime": extra / 1e6} if isinstance(extra, int) else extra)
                found.append(event)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"a malformed task entry in an event batch: {exc!r}") from None
    found += [{**common, **event} for event in batch.get("events") or () if isinstance(event, dict)]
    return found
