"""``create_app(app)``: the dashboard as a Starlette app, to serve (``asyncq dashboard``) or to mount."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

import asyncq.dashboard.api as api
import asyncq.dashboard.pages as pages
from asyncq.dashboard.auth import Auth, LoginMiddleware
from asyncq.dashboard.history import TaskHistory
from asyncq.dashboard.live import LiveFeed
from asyncq.dashboard.throttle import LoginThrottle
from asyncq.dashboard.web import HERE, Dashboard, default_history_path

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["create_app"]


class _StartFeed:
    """Starts the live feed on the first request: Starlette does not run a mounted app's lifespan."""

    def __init__(self, app: ASGIApp, feed: LiveFeed) -> None:
        self.app = app
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.feed.start()
        await self.app(scope, receive, send)


def create_app(
    app: App,
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    require_login: bool | None = None,
    history_path: str | Path | None = None,
    history_limit: int | None = None,
    history_expires: float | None = None,
    poll_interval: float = 2.0,
) -> Starlette:
    """The dashboard of ``app`` as a Starlette app: serve it (``asyncq dashboard``) or mount it.

    Credentials and history settings default to the app's ``dashboard_*`` settings (and so to
    ``ASYNCQ_DASHBOARD_*`` variables). A login is required when credentials are set, or when
    ``require_login`` says so (then credentials must be set). Failed logins are limited by
    ``dashboard_login_attempts`` per ``dashboard_login_window`` seconds.
    """
    conf = app.conf
    auth = Auth(
        token=token or conf.dashboard_token,
        username=username or conf.dashboard_username,
        password=password or conf.dashboard_password,
        required=require_login,
        throttle=LoginThrottle(int(conf.dashboard_login_attempts), float(conf.dashboard_login_window)),
    )
    history = TaskHistory(
        history_path or conf.dashboard_history_path or default_history_path(app),
        limit=history_limit or int(conf.dashboard_history_limit),
        expires=history_expires or float(conf.dashboard_history_expires),
    )
    dashboard = Dashboard(app, history, auth, poll_interval=poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await dashboard.feed.start()
        try:
            yield
        finally:
            await dashboard.feed.aclose()
            await app.aclose()
            history.close()

    routes: list[BaseRoute] = [
        *api.routes(),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(_StartFeed, feed=dashboard.feed), Middleware(LoginMiddleware, auth=auth)]
    web = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    web.state.dashboard = dashboard
    return web
