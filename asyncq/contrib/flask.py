"""Flask: an extension (``init_app``) whose tasks run inside the Flask app context.

::

    from flask import Flask
    from asyncq.contrib.flask import FlaskAsyncq

    queue = FlaskAsyncq()                       # or FlaskAsyncq(flask_app)

    @queue.task
    def send_mail(to: str) -> None:
        current_app.logger.info("mail to %s", to)   # the app context is there

    def create_app() -> Flask:
        flask_app = Flask(__name__)
        flask_app.config["ASYNCQ_BROKER_URL"] = "redis://127.0.0.1:6379/0"
        queue.init_app(flask_app)
        return flask_app

Views use the sync API: ``send_mail.delay("ada@example.com")`` sends at once and returns a
blocking handle (docs/sync.md). Settings come from ``flask_app.config`` keys named
``ASYNCQ_<SETTING>`` (``ASYNCQ_BROKER_URL``, ``ASYNCQ_TASK_DEFAULT_QUEUE``, ...).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from flask import Flask

from asyncq.app import App
from asyncq.config import SETTINGS
from asyncq.task import Task

__all__ = ["FlaskAsyncq"]


class FlaskAsyncq:
    """The asyncq extension: one App, configured from a Flask app's config."""

    def __init__(self, flask_app: Flask | None = None, *, name: str | None = None) -> None:
        self.app = App(name or "flask")
        self.flask_app: Flask | None = None
        if flask_app is not None:
            self.init_app(flask_app)

    def init_app(self, flask_app: Flask) -> None:
        """Configure the App from ``flask_app.config`` (``ASYNCQ_*`` keys) and bind its tasks."""
        for setting in SETTINGS.values():
            key = setting.env_var  # ASYNCQ_<SETTING>: the same names as the environment variables
            if key in flask_app.config:
                setattr(self.app.conf, setting.name, flask_app.config[key])
        self.flask_app = flask_app
        flask_app.extensions["asyncq"] = self

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """``@queue.task`` or ``@queue.task(queue=...)``: a task that runs in the Flask app context."""

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = self.app.task(**options)(self._in_context(func))
            return task

        return register(fn) if fn is not None else register

    def _in_context(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._context():
                    return await func(*args, **kwargs)

            return run_async

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._context():
                return func(*args, **kwargs)

        return run

    def _context(self) -> Any:
        if self.flask_app is None:
            raise RuntimeError("FlaskAsyncq.init_app(flask_app) was not called: no app context to run in")
        return self.flask_app.app_context()
