"""The ``asyncq`` command line: load ``module:app``, then call one library function per command.

A user error (bad module path, unknown task, bad URL, bad JSON) prints one line to stderr
and exits with status 2, without a traceback. A task that failed, was revoked or did not
finish within ``--timeout`` exits with status 1, again with one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand

from asyncq.__about__ import __version__
from asyncq._utils import import_string, now, redact_url
from asyncq.app import App
from asyncq.config import SETTINGS
from asyncq.exceptions import AsyncqError, TaskError
from asyncq.exceptions import TimeoutError as ResultTimeoutError
from asyncq.migrate import migrate as migrate_schemas
from asyncq.migrate import report as migration_report

__all__ = ["cli", "main"]

T = TypeVar("T")

#: Exit status of a user error (bad arguments, configuration, module path).
EXIT_USAGE: Final = 2
#: Exit status when the task failed, was revoked, or did not finish within --timeout.
EXIT_TASK_FAILED: Final = 1
#: Seconds ``--wait`` waits by default.
DEFAULT_WAIT_TIMEOUT: Final = 60.0
_ASYNCQ_DIR: Final = str(Path(__file__).resolve().parent)


class _Argument(TyperArgument):
    """A positional argument shown as its metavar alone (typer 0.29 adds ``<str>`` and ``{name}``)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        return self.display_name_raw


class _Command(TyperCommand):
    """A command whose help shows ``APP``, not ``{app_path}`` and ``<str>`` (pinned by the CLI tests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _Argument


cli = typer.Typer(
    name="asyncq",
    help="asyncq: an asyncio-native distributed task queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``cli.command`` with the plain help of :class:`_Command`."""
    return cli.command(name, cls=_Command)


AppPath = Annotated[
    str,
    typer.Argument(
        help="The app to load, as 'package.module:app'.",
        envvar="ASYNCQ_APP",
        metavar="APP",
        show_default=False,
    ),
]
LogLevel = Annotated[
    str,
    typer.Option("--log-level", "-l", help="Logging level.", envvar="ASYNCQ_LOG_LEVEL", metavar="LEVEL"),
]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="text, or json: one JSON object per line, with the running task's id, name, queue, "
        "worker and retries.",
        envvar="ASYNCQ_LOG_FORMAT",
        metavar="FORMAT",
    ),
]
Loop = Annotated[
    str | None,
    typer.Option(
        "--loop",
        help=f"auto (uvloop if installed), asyncio or uvloop. Default: {SETTINGS['worker_loop'].default}.",
        envvar="ASYNCQ_WORKER_LOOP",
        metavar="LOOP",
    ),
]


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error and exit with ``status`` (2: a user error)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(status)


def _import_location(exc: BaseException) -> str:
    """Where in the user's code an import failed: ' (path/file.py:12)', or '' if not in user code."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}:{exc.lineno})"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<") or frame.filename.startswith(_ASYNCQ_DIR):
            continue  # importlib's frozen frames and asyncq's own
        return f" ({frame.filename}:{frame.lineno})"
    return ""


def _apps_in(module_name: str) -> str:
    """'; apps in it: x' when the module imported fine but the attribute was wrong."""
    module = sys.modules.get(module_name)
    if module is None:
        return ""
    names = sorted(name for name, value in vars(module).items() if isinstance(value, App))
    return f"; apps in it: {', '.join(f'{module_name}:{n}' for n in names)}" if names else ""


def load_app(path: str) -> App:
    """Import ``module:attribute`` (the current directory is importable) and check it is an App."""
    if ":" not in path:
        module, dot, attr = path.rpartition(".")
        hint = f"; did you mean '{module}:{attr}'?" if dot and module and attr else ""
        fail(f"{path!r} is not an app path; use 'package.module:app'{hint}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name = path.partition(":")[0]
    try:
        app = import_string(path)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            fail(f"cannot import {path!r}: no module named {missing!r} (run from the directory above it?)")
        fail(f"cannot import {path!r}: {exc}{_import_location(exc)}")
    except ImportError as exc:
        fail(f"cannot import {path!r}: {exc}{_import_location(exc) or _apps_in(module_name)}")
    except Exception as exc:  # the user's module raised while importing: show where
        fail(f"cannot import {path!r}: {type(exc).__name__}: {exc}{_import_location(exc)}")
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
        fail(f"{option} is not valid JSON ({exc.msg} at position {exc.pos}): {text[:200]!r}")
    except (ValueError, RecursionError) as exc:  # an over-long integer, nesting past the stack
        fail(f"{option} is not usable JSON: {str(exc)[:200]}")
    if not isinstance(value, kind):
        fail(f"{option} must be a JSON {'array' if kind is list else 'object'}, got {type(value).__name__}")
    return value


def setup_logging(log_level: str, log_format: str) -> None:
    """Configure logging for a long-running command, failing on a bad level or format."""
    from asyncq.log import LOG_FORMATS, configure_logging

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    if log_format not in LOG_FORMATS:
        fail(f"unknown log format {log_format!r}; use {' or '.join(LOG_FORMATS)}")
    configure_logging(level, log_format)  # type: ignore[arg-type]  # checked against LOG_FORMATS


def check_beat(app: App) -> None:
    """Validate the periodic entries before a beat starts: names, schedules, registered tasks."""
    from asyncq.beat_entries import check_schedule

    try:
        check_schedule(app)
    except AsyncqError as exc:
        fail(str(exc))


def describe_failure(exc: BaseException) -> str:
    """A failed task's error as ``Type: message``, on one line."""
    if isinstance(exc, TaskError) and exc.exc_type:
        text = f"{exc.exc_type.rpartition('.')[2]}: {exc.exc_message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


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


@_command()
def run(
    app_path: AppPath,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues to consume. Default: the task_default_queue setting "
            f"({SETTINGS['task_default_queue'].default!r}).",
            envvar="ASYNCQ_QUEUES",
            metavar="Q1,Q2",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            help="Tasks run at once, at least 1. Default: the worker_concurrency setting "
            f"({SETTINGS['worker_concurrency'].default}).",
            envvar="ASYNCQ_WORKER_CONCURRENCY",
            metavar="N",
        ),
    ] = None,
    loop: Loop = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            "--shutdown-timeout",
            help="Seconds in-flight tasks get to finish on SIGTERM. Default: the worker_shutdown_timeout "
            f"setting ({SETTINGS['worker_shutdown_timeout'].default:g}).",
            envvar="ASYNCQ_WORKER_SHUTDOWN_TIMEOUT",
            metavar="SECONDS",
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
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname",
            "-n",
            help="The worker's name (default host:pid).",
            envvar="ASYNCQ_WORKER_HOSTNAME",
            metavar="NAME",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on this port (needs asyncq[metrics]). Default: the "
            "worker_metrics_port setting (none).",
            envvar="ASYNCQ_WORKER_METRICS_PORT",
            metavar="PORT",
        ),
    ] = None,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Restart the worker when a .py file under the current directory changes "
            "(in-flight tasks finish first). For development; needs watchfiles.",
            envvar="ASYNCQ_RELOAD",
        ),
    ] = False,
) -> None:
    """Start a worker for the app."""
    setup_logging(log_level, log_format)
    if reload:
        from asyncq.reload import child_argv, supervise

        try:
            raise typer.Exit(supervise(child_argv(sys.argv[1:]), [Path.cwd()]))
        except AsyncqError as exc:
            fail(str(exc))
    if concurrency is not None and concurrency < 1:
        fail(f"--concurrency must be at least 1, got {concurrency}")
    if shutdown_timeout is not None and shutdown_timeout < 0:
        fail(f"--shutdown-timeout must be 0 or more seconds, got {shutdown_timeout:g}")
    app = load_app(app_path)
    if beat:
        check_beat(app)
    try:
        worker = app.worker(
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            loop=loop,
            shutdown_timeout=shutdown_timeout,
            beat=beat,
            send_events=events or None,
            hostname=hostname,
            metrics_port=metrics_port,
        )
        worker.run()
    except AsyncqError as exc:
        fail(str(exc))


@_command("beat")
def beat_command(
    app_path: AppPath,
    list_entries: Annotated[
        bool, typer.Option("--list", help="Print every entry with its next 3 run times, then exit.")
    ] = False,
    loop: Loop = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Send the app's periodic tasks, without running any (or list them with --list)."""
    from asyncq.scheduler import Scheduler, upcoming

    setup_logging(log_level, log_format)
    app = load_app(app_path)
    check_beat(app)
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


@_command("dashboard")
def dashboard_command(
    app_path: AppPath,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; a non-loopback one needs a login.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5555,
    log_level: LogLevel = "info",
) -> None:
    """Serve the web dashboard (extra asyncq[dashboard]); see docs/dashboard.md."""
    try:
        from asyncq.dashboard.server import serve
    except ImportError as exc:
        fail(f"the dashboard needs its extra: pip install 'asyncq[dashboard]' ({exc})")
    app = load_app(app_path)
    try:
        serve(app, host=host, port=port, log_level=log_level)
    except AsyncqError as exc:
        fail(str(exc))


WaitTimeout = Annotated[
    float,
    typer.Option("--timeout", help="Seconds --wait waits before giving up (exit 1).", metavar="SECONDS"),
]


def _waited_too_long(app: App, what: str, timeout: float) -> NoReturn:
    fail(
        f"{what} did not finish within {timeout:g}s; is a worker running for "
        f"{redact_url(app.broker_url)}? (--timeout sets the wait)",
        EXIT_TASK_FAILED,
    )


@_command()
def enqueue(
    app_path: AppPath,
    task_name: Annotated[str, typer.Argument(help="The registered task name.", metavar="TASK")],
    args: Annotated[
        str, typer.Option("--args", "-a", help="Positional arguments, a JSON array.", metavar="JSON")
    ] = "[]",
    kwargs: Annotated[
        str, typer.Option("--kwargs", "-k", help="Keyword arguments, a JSON object.", metavar="JSON")
    ] = "{}",
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="Send to this queue instead of the task's.", metavar="QUEUE"),
    ] = None,
    countdown: Annotated[
        float | None, typer.Option("--countdown", help="Seconds before it may run.", metavar="SECONDS")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until a worker has run the task (up to --timeout), then print its result as JSON; "
            "exit 1 if it failed.",
        ),
    ] = False,
    timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT,
) -> None:
    """Send a task by name; print its id (or, with --wait, its result as JSON)."""
    app = load_app(app_path)
    parsed_args = parse_json("--args", args, list)
    parsed_kwargs = parse_json("--kwargs", kwargs, dict)
    if task_name not in app.tasks:
        own = sorted(name for name in app.tasks if not name.startswith("asyncq."))
        fail(f"unknown task {task_name!r}; registered: {', '.join(own) or 'none'}")
    task = app.tasks[task_name]

    async def go() -> tuple[str, Any, BaseException | None]:
        try:
            result = await task.apply_async(parsed_args, parsed_kwargs, queue=queue, countdown=countdown)
            if not wait:
                return result.id, None, None
            try:
                return result.id, await result.get(timeout=timeout), None
            except Exception as exc:  # the task's own exception (or the timeout): reported below
                return result.id, None, exc
        finally:
            await app.aclose()

    try:
        task_id, value, error = asyncio.run(go())
    except AsyncqError as exc:
        fail(str(exc))
    if isinstance(error, ResultTimeoutError):
        _waited_too_long(app, f"task {task_name}[{task_id}]", timeout)
    if error is not None:
        fail(f"task {task_name}[{task_id}] failed: {describe_failure(error)}", EXIT_TASK_FAILED)
    typer.echo(json.dumps(value, default=str) if wait else task_id)


def _result_summary(task_id: str, record: Any) -> dict[str, Any]:
    """The JSON ``asyncq result`` prints for one record (None: nothing is known of the task)."""
    from asyncq.result import exception_from_record
    from asyncq.states import READY_STATES, State

    if record is None:
        return {"id": task_id, "state": str(State.PENDING), "result": None}
    summary: dict[str, Any] = {"id": task_id, "state": str(record.status)}
    if record.status == State.SUCCESS:
        summary["result"] = record.result
    elif record.status in READY_STATES:
        summary["error"] = describe_failure(exception_from_record(record))
    elif record.status == State.RETRY:
        summary["retries"] = record.retries
        eta = record.meta.get("eta")
        if isinstance(eta, int | float):
            summary["countdown"] = round(max(0.0, eta - now()), 3)
            summary["eta"] = eta
        if record.exc_type:
            summary["error"] = f"{record.exc_type.rpartition('.')[2]}: {record.exc_message}"
    else:
        summary["meta"] = record.meta
    return summary


@_command()
def result(
    app_path: AppPath,
    task_id: Annotated[str, typer.Argument(help="The task id.", metavar="TASK_ID")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until the task finishes (succeeds, fails or is revoked)."),
    ] = False,
    timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT,
) -> None:
    """Print a task's state and result (or error) as JSON; exit 1 if it failed or was revoked."""
    from asyncq.result import decode_record
    from asyncq.states import State

    app = load_app(app_path)

    async def go() -> dict[str, Any]:
        try:
            await app.connect()
            if wait:
                data = await app.backend.wait(task_id, timeout=timeout)
                if data is None:
                    raise ResultTimeoutError(f"task {task_id} did not finish within {timeout}s")
            else:
                data = await app.backend.get(task_id)
            record = None if data is None else decode_record(data, app.serializers)
            return _result_summary(task_id, record)
        finally:
            await app.aclose()

    try:
        summary = asyncio.run(go())
    except ResultTimeoutError:
        _waited_too_long(app, f"task {task_id}", timeout)
    except AsyncqError as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, default=str))
    if summary["state"] in (State.FAILURE, State.REVOKED):
        raise typer.Exit(EXIT_TASK_FAILED)


@_command()
def purge(
    app_path: AppPath,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue", "-q", help="The queue. Default: the task_default_queue setting.", metavar="QUEUE"
        ),
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


@_command("relay")
def relay_command(
    app_path: AppPath, loop: Loop = None, log_level: LogLevel = "info", log_format: LogFormat = "text"
) -> None:
    """Move the app's committed outbox rows (the outbox_url setting) to its broker until stopped."""
    from asyncq.outbox import run_relay

    setup_logging(log_level, log_format)
    app = load_app(app_path)
    try:
        run_relay(app, loop=loop)
    except AsyncqError as exc:
        fail(str(exc))


@_command()
def migrate(app_path: AppPath) -> None:
    """Create or upgrade the broker's, result backend's and outbox's tables (postgresql://)."""
    app = load_app(app_path)
    done = run_async(lambda: migrate_schemas(app))
    for line in migration_report(app, done):
        typer.echo(line)


from asyncq.cli_dlq import make_dlq_cli  # noqa: E402 - mounted once the helpers it uses exist
from asyncq.cli_events import make_events_command  # noqa: E402 - as above

cli.add_typer(make_dlq_cli(load_app, run_async, command_class=_Command, argument_class=_Argument), name="dlq")
_command("events")(make_events_command(load_app, run_async))
from asyncq.cli_control import register as _register_control  # noqa: E402 - after the helpers it takes

_register_control(cli, load_app=load_app, run_async=run_async, fail=fail)


def main() -> None:
    """Entry point of the ``asyncq`` script."""
    cli()
