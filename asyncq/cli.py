"""The ``asyncq`` command line: load ``module:app``, then call one library function per command.

A user error (bad module path, unknown task, bad URL, bad JSON) prints one line to stderr
and exits with status 2, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from asyncq.__about__ import __version__
from asyncq._utils import import_string
from asyncq.app import App
from asyncq.exceptions import AsyncqError

__all__ = ["cli", "main"]

T = TypeVar("T")

cli = typer.Typer(
    name="asyncq",
    help="asyncq: an asyncio-native distributed task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AppPath = Annotated[
    str, typer.Argument(help="The app to load, as 'package.module:app'.", envvar="ASYNCQ_APP")
]


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def load_app(path: str) -> App:
    """Import ``module:attribute`` (the current directory is importable) and check it is an App."""
    if ":" not in path:
        fail(f"{path!r} is not an app path; use 'package.module:app'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = import_string(path)
    except ImportError as exc:
        fail(f"cannot import {path!r}: {exc}")
    if not isinstance(app, App):
        fail(f"{path!r} is a {type(app).__name__}, not an asyncq App")
    return app


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning asyncq's errors into one-line messages."""
    try:
        return asyncio.run(factory())
    except AsyncqError as exc:
        fail(str(exc))


def parse_json(option: str, text: str, kind: type) -> Any:
    """Parse a JSON option value and check its type."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option} is not valid JSON ({exc.msg} at position {exc.pos}): {text!r}")
    if not isinstance(value, kind):
        fail(f"{option} must be a JSON {'array' if kind is list else 'object'}, got {type(value).__name__}")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asyncq {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """asyncq: an asyncio-native distributed task queue."""


@cli.command()
def run(
    app_path: AppPath,
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated queues.", envvar="ASYNCQ_QUEUES")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Tasks run at once.", envvar="ASYNCQ_WORKER_CONCURRENCY"),
    ] = None,
    loop: Annotated[
        str | None, typer.Option("--loop", help="auto, asyncio or uvloop.", envvar="ASYNCQ_WORKER_LOOP")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", "-l", help="Logging level.", envvar="ASYNCQ_LOG_LEVEL")
    ] = "info",
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            "--shutdown-timeout", help="Seconds to let tasks finish.", envvar="ASYNCQ_WORKER_SHUTDOWN_TIMEOUT"
        ),
    ] = None,
    beat: Annotated[
        bool,
        typer.Option("--beat", help="Also send periodic tasks (safe on every worker).", envvar="ASYNCQ_BEAT"),
    ] = False,
    events: Annotated[
        bool,
        typer.Option(
            "--events", "-E", help="Send task and worker events.", envvar="ASYNCQ_WORKER_SEND_TASK_EVENTS"
        ),
    ] = False,
) -> None:
    """Start a worker for the app."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    try:
        worker = app.worker(
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            loop=loop,
            shutdown_timeout=shutdown_timeout,
            beat=beat,
            send_events=events or None,
        )
        worker.run()
    except AsyncqError as exc:
        fail(str(exc))


@cli.command("beat")
def beat_command(
    app_path: AppPath,
    list_entries: Annotated[
        bool, typer.Option("--list", help="Print every entry with its next 3 run times, then exit.")
    ] = False,
    loop: Annotated[
        str | None, typer.Option("--loop", help="auto, asyncio or uvloop.", envvar="ASYNCQ_WORKER_LOOP")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", "-l", help="Logging level.", envvar="ASYNCQ_LOG_LEVEL")
    ] = "info",
) -> None:
    """Send the app's periodic tasks, without running any (or list them with --list)."""
    from asyncq.scheduler import Scheduler, upcoming

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(app_path)
    if list_entries:

        async def go() -> list[str]:
            try:
                listed = await upcoming(app, 3)
            finally:
                await app.aclose()
            lines = []
            for entry, ticks in listed:
                lines.append(f"{entry.name}: {entry.task} on {entry.schedule!r} (catch_up={entry.catch_up})")
                lines.extend(f"  {tick.isoformat()}" for tick in ticks)
            return lines or ["no periodic entries"]

        typer.echo("\n".join(run_async(go)))
        return
    try:
        Scheduler(app).run(loop=loop)
    except AsyncqError as exc:
        fail(str(exc))


@cli.command()
def enqueue(
    app_path: AppPath,
    task_name: Annotated[str, typer.Argument(help="The registered task name.")],
    args: Annotated[str, typer.Option("--args", "-a", help="Positional arguments, a JSON array.")] = "[]",
    kwargs: Annotated[str, typer.Option("--kwargs", "-k", help="Keyword arguments, a JSON object.")] = "{}",
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Override the task's queue.")] = None,
    countdown: Annotated[float | None, typer.Option("--countdown", help="Seconds before it may run.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds to wait with --wait.")] = None,
) -> None:
    """Send a task by name; print its id (or, with --wait, its result as JSON)."""
    app = load_app(app_path)
    parsed_args = parse_json("--args", args, list)
    parsed_kwargs = parse_json("--kwargs", kwargs, dict)
    if task_name not in app.tasks:
        own = sorted(name for name in app.tasks if not name.startswith("asyncq."))
        fail(f"unknown task {task_name!r}; registered: {', '.join(own) or 'none'}")
    task = app.tasks[task_name]

    async def go() -> Any:
        try:
            result = await task.apply_async(parsed_args, parsed_kwargs, queue=queue, countdown=countdown)
            if not wait:
                return result.id
            return await result.get(timeout=timeout)
        finally:
            await app.aclose()

    outcome = run_async(go)
    typer.echo(json.dumps(outcome, default=str) if wait else outcome)


@cli.command()
def result(
    app_path: AppPath,
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the task finishes.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds to wait with --wait.")] = None,
) -> None:
    """Print a task's state and result (or error) as JSON."""
    app = load_app(app_path)

    async def go() -> dict[str, Any]:
        try:
            handle = app.AsyncResult(task_id)
            if wait:
                try:
                    await handle.get(timeout=timeout, propagate=False)
                except AsyncqError as exc:
                    if isinstance(exc, TimeoutError):
                        raise
            state = await handle.state()
            info = await handle.info()
            if isinstance(info, BaseException):
                return {"id": task_id, "state": str(state), "error": f"{type(info).__name__}: {info}"}
            return {"id": task_id, "state": str(state), "result": info}
        finally:
            await app.aclose()

    typer.echo(json.dumps(run_async(go), default=str))


@cli.command()
def purge(
    app_path: AppPath,
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="The queue (default: the default queue).")
    ] = None,
) -> None:
    """Drop every waiting message of a queue."""
    app = load_app(app_path)

    async def go() -> int:
        try:
            return await app.purge(queue)
        finally:
            await app.aclose()

    count = run_async(go)
    typer.echo(f"purged {count} message(s) from {queue or app.conf.task_default_queue}")


from asyncq.cli_dlq import make_dlq_cli  # noqa: E402 - mounted once the helpers it uses exist
from asyncq.cli_events import make_events_command  # noqa: E402 - as above

cli.add_typer(make_dlq_cli(load_app, run_async), name="dlq")
cli.command("events")(make_events_command(load_app, run_async))


def main() -> None:
    """Entry point of the ``asyncq`` script."""
    cli()
