"""What the dashboard's routes share: its state, the task filter of a query, and running an action."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from asyncq.app import default_store_url
from asyncq.dashboard.auth import Auth
from asyncq.dashboard.history import TaskFilter, TaskHistory
from asyncq.dashboard.live import LiveFeed
from asyncq.dashboard.metrics import ClusterMetrics
from asyncq.dashboard.service import ActionError, DashboardService, Outcome

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["HERE", "Dashboard", "act", "dashboard_of", "default_history_path", "safe_path", "task_filter"]

HERE: Final = Path(__file__).parent
_SAFE_NEXT: Final = re.compile(r"^/[^/\\]")


class Dashboard:
    """Everything one dashboard holds: the app, its history, the live feed and the access control."""

    def __init__(self, app: App, history: TaskHistory, auth: Auth, *, poll_interval: float = 2.0) -> None:
        self.app = app
        self.history = history
        self.auth = auth
        self.service = DashboardService(app, history)
        self.metrics = ClusterMetrics()
        self.feed = LiveFeed(app, history, poll_interval=poll_interval, on_event=self.metrics.feed)


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def default_history_path(app: App) -> str:
    """Beside the app's default SQLite store: ``~/.local/state/asyncq/<app>-dashboard.sqlite3``."""
    return default_store_url(f"{app.main}-dashboard").removeprefix("sqlite:///")


def task_filter(request: Request) -> TaskFilter:
    """The task-list filter of a request's query string (empty fields mean "any")."""
    q = request.query_params
    since, within = q.get("since"), q.get("within")
    try:
        since_value = float(since) if since else None
        if within:  # "updated in the last N seconds", the page's menu
            since_value = max(since_value or 0.0, time.time() - float(within))
    except ValueError:
        raise ActionError(f"since and within must be seconds, got {since or within!r}") from None
    return TaskFilter(
        state=q.get("state") or None,
        name=q.get("name") or None,
        queue=q.get("queue") or None,
        worker=q.get("worker") or None,
        search=(q.get("q") or "").strip() or None,
        since=since_value,
    )


def safe_path(target: str) -> str:
    """``target`` if it is a path of this dashboard, else "/": redirects never lead elsewhere."""
    # "//host" and "/\\host" are other sites to a browser; "/" alone is fine.
    return target if target == "/" or _SAFE_NEXT.match(target) else "/"


async def _fields(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.body()
        if not body:
            return {}
        try:
            data = json.loads(body)
        except ValueError:
            raise ActionError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise ActionError("the request body must be a JSON object")
        return data
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def act(
    request: Request, action: Callable[[dict[str, Any]], Awaitable[Outcome]], *, api: bool
) -> Response:
    """Run one action after the CSRF check; JSON for the API, a redirect back with a message for pages."""
    dashboard = dashboard_of(request)
    try:
        fields = await _fields(request)
    except ActionError as exc:
        return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
    if not dashboard.auth.csrf_valid(request, fields):
        error = "missing or wrong CSRF token (reload the page and try again)"
        if api:
            return JSONResponse({"ok": False, "error": error}, status_code=403)
        return Response(error, status_code=403, media_type="text/plain")
    try:
        outcome = await action(fields)
    except ActionError as exc:
        if api:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=exc.status)
        return _back(request, fields, error=str(exc))
    if api:
        return JSONResponse(outcome.to_json())
    return _back(request, fields, message=outcome.message, target=_target(outcome))


def _target(outcome: Outcome) -> str | None:
    details = outcome.details
    if isinstance(details, dict) and isinstance(details.get("id"), str) and "sent again" in outcome.message:
        return f"/tasks/{details['id']}"
    return None


def _back(
    request: Request,
    fields: dict[str, Any],
    *,
    message: str | None = None,
    error: str | None = None,
    target: str | None = None,
) -> Response:
    root = str(request.scope.get("root_path") or "")
    wanted = target or str(fields.get("next") or "/")
    wanted = safe_path(wanted)
    path, _, _query = wanted.partition("?")
    flash = urlencode({"msg": message} if message else {"error": error or ""})
    return RedirectResponse(f"{root}{path}?{flash}", status_code=303)
