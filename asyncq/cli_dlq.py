"""``asyncq dlq module:app list | show ID | requeue ID|--all | purge``: the dead-letter commands.

Each command calls one :class:`~asyncq.deadletters.DeadLetters` method; cli.py mounts the
group built here (it passes in its app loader and runner, which keeps this module below it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from asyncq.app import App
from asyncq.deadletters import describe

__all__ = ["make_dlq_cli"]

T = TypeVar("T")
Runner = Callable[[Callable[[], Coroutine[Any, Any, T]]], T]

QueueOption = Annotated[
    str | None,
    typer.Option("--queue", "-q", help="One queue (default: every queue the app knows).", metavar="QUEUE"),
]


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("ID", "QUEUE", "DEAD-LETTERED (UTC)", "TASK", "REASON")
    lines = [header]
    for row in rows:
        when = row["dead_lettered_at"][:19].replace("T", " ")
        reason = row["reason"] if len(row["reason"]) <= 60 else row["reason"][:57] + "..."
        lines.append((row["id"], row["queue"], when, row["task"] or "?", reason))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line, widths, strict=False)), line[-1]])
        for line in lines
    )


def make_dlq_cli(
    load_app: Callable[[str], App],
    run_async: Runner[Any],
    *,
    command_class: type[TyperCommand] = TyperCommand,
    argument_class: type[TyperArgument] = TyperArgument,
) -> typer.Typer:
    """The ``dlq`` command group, using the main CLI's app loader, runner and help classes."""

    class Group(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for param in self.params:  # shown as the main CLI shows its arguments
                if type(param) is TyperArgument:
                    param.__class__ = argument_class

    dlq = typer.Typer(
        help="List, show, requeue and purge dead-lettered messages.", no_args_is_help=True, cls=Group
    )

    @dlq.callback()
    def _root(
        ctx: typer.Context,
        app_path: Annotated[
            str,
            typer.Argument(
                help="The app to load, as 'package.module:app'.", envvar="ASYNCQ_APP", metavar="APP"
            ),
        ],
    ) -> None:
        """List, show, requeue and purge dead-lettered messages."""
        ctx.obj = app_path

    def run(ctx: typer.Context, call: Callable[[App], Coroutine[Any, Any, T]]) -> T:
        app = load_app(ctx.obj)

        async def go() -> T:
            try:
                return await call(app)
            finally:
                await app.aclose()

        result: T = run_async(go)
        return result

    @dlq.command("list", cls=command_class)
    def list_command(
        ctx: typer.Context,
        queue: QueueOption = None,
        limit: Annotated[
            int, typer.Option("--limit", "-n", min=1, help="Most dead letters shown.", metavar="N")
        ] = 100,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        """List dead letters, oldest first."""

        async def call(app: App) -> list[dict[str, Any]]:
            return [describe(letter, app) for letter in await app.dead_letters.list(queue, limit=limit)]

        rows = run(ctx, call)
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row, default=str))
        elif rows:
            typer.echo(_table(rows))
        else:
            typer.echo("no dead letters")

    @dlq.command("show", cls=command_class)
    def show_command(
        ctx: typer.Context,
        message_id: Annotated[str, typer.Argument(help="The message (task) id.", metavar="ID")],
        queue: QueueOption = None,
    ) -> None:
        """Print one dead letter as JSON: where, when, why, and its task message."""

        async def call(app: App) -> dict[str, Any] | None:
            letter = await app.dead_letters.show(message_id, queue)
            return None if letter is None else describe(letter, app)

        view = run(ctx, call)
        if view is None:
            typer.echo(f"Error: no dead letter with id {message_id!r}", err=True)
            raise typer.Exit(2)
        typer.echo(json.dumps(view, default=str, indent=2))

    @dlq.command("requeue", cls=command_class)
    def requeue_command(
        ctx: typer.Context,
        message_id: Annotated[str | None, typer.Argument(help="The message (task) id.", metavar="ID")] = None,
        requeue_all: Annotated[bool, typer.Option("--all", help="Requeue every dead letter.")] = False,
        queue: QueueOption = None,
    ) -> None:
        """Send one dead letter (or, with --all, every one) back to its queue to run again."""
        if (message_id is None) == (not requeue_all):
            typer.echo("Error: give a message id or --all (not both)", err=True)
            raise typer.Exit(2)
        if message_id is None:
            count = run(ctx, lambda app: app.dead_letters.requeue_all(queue))
            typer.echo(f"requeued {count} dead letter(s)")
            return
        if not run(ctx, lambda app: app.dead_letters.requeue(message_id, queue)):
            typer.echo(f"Error: no dead letter with id {message_id!r}", err=True)
            raise typer.Exit(2)
        typer.echo(f"requeued {message_id}")

    @dlq.command("purge", cls=command_class)
    def purge_command(ctx: typer.Context, queue: QueueOption = None) -> None:
        """Drop dead letters for good."""
        count = run(ctx, lambda app: app.dead_letters.purge(queue))
        typer.echo(f"purged {count} dead letter(s)")

    return dlq
