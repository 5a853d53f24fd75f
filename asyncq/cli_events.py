"""``asyncq events module:app``: tail task and worker events live, as a table or JSON lines.

cli.py registers the command built here (passing in its app loader and runner, which keeps
this module below it); the reading is :meth:`asyncq.events.Events.stream`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from asyncq.app import App

__all__ = ["format_event", "make_events_command"]

T = TypeVar("T")
Runner = Callable[[Callable[[], Coroutine[Any, Any, T]]], T]


def _details(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    if "exception_type" in event:
        text = f"{event['exception_type']}: {event.get('exception_message', '')}"
        if kind == "task-retried":
            text = f"retry {event.get('retries')}: {text}"
        return text
    if "reason" in event:
        return str(event["reason"])
    if "runtime" in event:
        return f"in {event['runtime']:.3f}s"
    if kind.startswith("worker-"):
        queues = f" queues={','.join(event['queues'])}" if event.get("queues") else ""
        return f"active={event.get('active', 0)} processed={event.get('processed', 0)}{queues}"
    if kind == "task-retried":
        return f"retry {event.get('retries')}"
    return ""


def format_event(event: dict[str, Any]) -> str:
    """One event as a table row: time, type, task name [id], where, details."""
    try:
        when = datetime.fromtimestamp(float(event.get("timestamp", 0))).strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError):
        when = "?"
    kind = str(event.get("type", "?"))
    task = f"{event.get('name') or '?'}[{event.get('uuid')}]" if kind.startswith("task-") else ""
    where = str(event.get("hostname") or "")
    if kind.startswith("task-") and event.get("queue"):
        where = f"{where} {event['queue']}".strip()
    return "  ".join(part for part in (when, f"{kind:<18}", task, where, _details(event)) if part).rstrip()


def make_events_command(load_app: Callable[[str], App], run_async: Runner[Any]) -> Callable[..., None]:
    """The ``events`` command, using the main CLI's app loader and coroutine runner."""

    def events(
        app_path: Annotated[
            str,
            typer.Argument(
                help="The app to load, as 'package.module:app'.", envvar="ASYNCQ_APP", metavar="APP"
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        history: Annotated[
            bool, typer.Option("--history", help="Start with the events the bus kept (not on RabbitMQ).")
        ] = False,
        count: Annotated[
            int | None, typer.Option("--count", "-n", min=1, help="Stop after this many events.", metavar="N")
        ] = None,
    ) -> None:
        """Print task and worker events as they happen (workers need -E / worker_send_task_events)."""
        app = load_app(app_path)

        async def tail() -> None:
            seen = 0
            try:
                stream = app.events.stream(history=history)
                async for event in stream:
                    line = json.dumps(event, default=str) if as_json else format_event(event)
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        await stream.aclose()  # type: ignore[attr-defined]
                        return
            finally:
                await app.aclose()

        try:
            run_async(tail)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None

    return events
