"""``python manage.py asyncq_worker``: run an asyncq worker of the project's App."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from asyncq.contrib.django.conf import get_app
from asyncq.exceptions import AsyncqError


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    """Run a worker until SIGTERM/SIGINT (a second signal stops it at once)."""

    help = "Run an asyncq worker for this project's tasks (asyncq tasks and Django @task functions)."

    def add_arguments(self, parser: CommandParser) -> None:
        """The options of ``asyncq run``."""
        parser.add_argument("--queues", "-Q", help="Comma-separated queues (default: the default queue).")
        parser.add_argument("--concurrency", "-c", type=int, help="Tasks run at once.")
        parser.add_argument("--loop", help="auto, asyncio or uvloop.")
        parser.add_argument("--log-level", "-l", default="info", help="Logging level.")
        parser.add_argument("--shutdown-timeout", type=float, help="Seconds to let tasks finish.")
        parser.add_argument("--beat", action="store_true", help="Also send periodic tasks.")
        parser.add_argument("--thread-pool-size", type=int, help="Threads running plain-function tasks.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Configure logging, build the worker, run it."""
        level = logging.getLevelName(str(options["log_level"]).upper())
        if not isinstance(level, int):
            raise CommandError(
                f"unknown log level {options['log_level']!r}; use debug, info, warning or error"
            )
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        queues = [q.strip() for q in (options["queues"] or "").split(",") if q.strip()] or None
        try:
            worker = get_app().worker(
                queues=queues,
                concurrency=options["concurrency"],
                loop=options["loop"],
                shutdown_timeout=options["shutdown_timeout"],
                beat=options["beat"],
                thread_pool_size=options["thread_pool_size"],
            )
            worker.run()
        except AsyncqError as exc:
            raise CommandError(str(exc)) from exc
