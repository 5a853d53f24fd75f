"""The ``asyncq inspect`` and ``asyncq control`` commands: the cluster's remote control from a shell.

``inspect`` asks the workers (ping, active, reserved, scheduled, registered, stats,
active-queues, revoked) or lists their presence records (workers) and prints a table, or
JSON with ``--json``. ``control`` sends one command (revoke, rate-limit, time-limit,
add-consumer, cancel-consumer, pool-resize, shutdown) and prints each worker's answer.
cli.py registers both with :func:`register`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from asyncq.control import ControlReply, to_json

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["INSPECT_COMMANDS", "register"]

INSPECT_COMMANDS = (
    "ping",
    "active",
    "reserved",
    "scheduled",
    "registered",
    "stats",
    "active-queues",
    "revoked",
    "workers",
)
CONTROL_USAGE = {
    "revoke": "revoke ID [ID...] [--terminate]",
    "rate-limit": "rate-limit TASK RATE (e.g. 10/s; 'none' removes it)",
    "time-limit": "time-limit TASK SOFT HARD (seconds; 'none' removes one)",
    "add-consumer": "add-consumer QUEUE",
    "cancel-consumer": "cancel-consumer QUEUE",
    "pool-resize": "pool-resize N",
    "shutdown": "shutdown",
}


AppArg = Annotated[str, typer.Argument(help="The app to load, as 'package.module:app'.", envvar="ASYNCQ_APP")]
DestinationOpt = Annotated[
    str | None, typer.Option("--destination", "-d", help="Comma-separated worker names (default: all).")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", "-t", help="Seconds to wait for replies.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; '(none)' for no rows."""
    if not rows:
        return "(none)"
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _destination(text: str | None) -> list[str] | None:
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    return names or None


def _inspect_rows(what: str, found: Any) -> tuple[list[str], list[list[Any]]]:
    current = time.time()
    if what == "ping":
        return ["worker", "reply"], [[w, r.message] for w, r in sorted(found.items())]
    if what == "workers":
        return ["worker", "status", "seen", "processed", "in flight", "concurrency", "queues"], [
            [
                s.hostname,
                "LOST" if s.is_lost else "up",
                f"{current - s.seen:.1f}s ago",
                s.stats.processed,
                s.stats.in_flight,
                s.stats.concurrency,
                ",".join(s.stats.queues),
            ]
            for s in found
        ]
    if what == "stats":
        return [
            "worker",
            "pid",
            "processed",
            "failed",
            "in flight",
            "held",
            "concurrency",
            "rss MB",
            "loop lag",
            "uptime",
        ], [
            [
                w,
                s.pid,
                s.processed,
                s.failed,
                s.in_flight,
                s.held,
                s.concurrency,
                f"{s.rss_bytes / 1e6:.1f}",
                f"{s.loop_lag * 1000:.1f}ms",
                f"{current - s.started:.0f}s",
            ]
            for w, s in sorted(found.items())
        ]
    if what in ("active", "reserved", "scheduled"):
        headers = ["worker", "id", "task", "args", "queue"] + (["runtime"] if what == "active" else [])
        rows = []
        for worker, tasks in sorted(found.items()):
            for t in tasks:
                row = [worker, t.id, t.name, json.dumps(t.args), t.queue]
                rows.append(row + ([f"{t.runtime:.2f}s"] if what == "active" else []))
        return headers, rows
    if what == "active-queues":
        return ["worker", "queue"], [[w, q.name] for w, queues in sorted(found.items()) for q in queues]
    column = "task" if what == "registered" else "task id"
    return ["worker", column], [[w, item] for w, items in sorted(found.items()) for item in items]


async def run_inspect(app: App, what: str, destination: list[str] | None, timeout: float) -> Any:
    """The answer to ``asyncq inspect ... WHAT``, as reply objects."""
    try:
        if what == "workers":
            return await app.control.workers(timeout=timeout)
        inspector = app.control.inspect(destination=destination, timeout=timeout)
        if what == "ping":
            return await inspector.ping()
        method: Callable[[], Coroutine[Any, Any, Any]] = getattr(inspector, what.replace("-", "_"))
        return await method()
    finally:
        await app.aclose()


def _optional_float(text: str, what: str, fail: Callable[[str], NoReturn]) -> float | None:
    if text.lower() in ("none", "null", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        fail(f"{what} must be a number of seconds or 'none', got {text!r}")


async def run_control(
    app: App,
    action: str,
    args: list[str],
    *,
    terminate: bool,
    destination: list[str] | None,
    timeout: float,
    fail: Callable[[str], NoReturn],
) -> dict[str, ControlReply]:
    """Send one ``asyncq control`` command; return the replies by worker."""
    control = app.control
    expected = {"revoke": None, "rate-limit": 2, "time-limit": 3, "pool-resize": 1}
    count = expected.get(action, 1 if action.endswith("consumer") else 0)
    if (count is None and not args) or (count is not None and len(args) != count):
        fail(f"usage: asyncq control APP {CONTROL_USAGE[action]}")
    try:
        if action == "revoke":
            return await control.revoke(
                args, terminate=terminate, destination=destination, timeout=timeout, reply=True
            )
        if action == "rate-limit":
            rate = None if args[1].lower() in ("none", "null", "-") else args[1]
            return await control.rate_limit(args[0], rate, destination=destination, timeout=timeout)
        if action == "time-limit":
            soft, hard = (
                _optional_float(a, n, fail) for a, n in zip(args[1:], ("SOFT", "HARD"), strict=True)
            )
            return await control.time_limit(args[0], soft, hard, destination=destination, timeout=timeout)
        if action == "add-consumer":
            return await control.add_consumer(args[0], destination=destination, timeout=timeout)
        if action == "cancel-consumer":
            return await control.cancel_consumer(args[0], destination=destination, timeout=timeout)
        if action == "pool-resize":
            if not args[0].isdigit():
                fail(f"pool-resize needs a whole number, got {args[0]!r}")
            return await control.pool_resize(int(args[0]), destination=destination, timeout=timeout)
        return await control.shutdown(destination=destination, timeout=timeout)
    finally:
        await app.aclose()


def register(
    cli: typer.Typer,
    *,
    load_app: Callable[[str], App],
    run_async: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any],
    fail: Callable[[str], NoReturn],
) -> None:
    """Add ``inspect`` and ``control`` to ``cli`` (helpers passed in: this module never imports cli)."""

    @cli.command("inspect")
    def inspect_command(
        app_path: AppArg,
        what: Annotated[str, typer.Argument(help="|".join(INSPECT_COMMANDS))],
        destination: DestinationOpt = None,
        timeout: TimeoutOpt = 1.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Ask the running workers a question and print their answers."""
        if what not in INSPECT_COMMANDS:
            fail(f"unknown inspect command {what!r}; use one of {', '.join(INSPECT_COMMANDS)}")
        if timeout <= 0:
            fail(f"--timeout must be > 0, got {timeout}")
        app = load_app(app_path)
        found = run_async(lambda: run_inspect(app, what, _destination(destination), timeout))
        if as_json:
            typer.echo(json.dumps(to_json(found), default=str, indent=2))
            return
        headers, rows = _inspect_rows(what, found)
        typer.echo(table(headers, rows))

    @cli.command("control")
    def control_command(
        app_path: AppArg,
        action: Annotated[str, typer.Argument(help="|".join(CONTROL_USAGE))],
        args: Annotated[list[str] | None, typer.Argument(help="The action's arguments.")] = None,
        terminate: Annotated[
            bool, typer.Option("--terminate", help="revoke: also stop running tasks.")
        ] = False,
        destination: DestinationOpt = None,
        timeout: TimeoutOpt = 1.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Send a command to the running workers and print each one's answer."""
        if action not in CONTROL_USAGE:
            fail(f"unknown control command {action!r}; use one of {', '.join(CONTROL_USAGE)}")
        if timeout <= 0:
            fail(f"--timeout must be > 0, got {timeout}")
        app = load_app(app_path)
        replies = run_async(
            lambda: run_control(
                app,
                action,
                list(args or []),
                terminate=terminate,
                destination=_destination(destination),
                timeout=timeout,
                fail=fail,
            )
        )
        if as_json:
            typer.echo(json.dumps(to_json(replies), indent=2))
            return
        rows = [[w, "ok" if r.ok else "error", r.message] for w, r in sorted(replies.items())]
        typer.echo(table(["worker", "result", "message"], rows) if rows else "no worker answered")
