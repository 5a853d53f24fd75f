"""The dashboard's HTML pages: rendered on the server (readable with JavaScript off), patched live.

Each page's changing part is a template of its own: ``?partial=1`` renders just that part,
which the page's small script fetches again when the SSE stream says its topic changed.
Forms post to the same paths as the API's actions (without ``/api``) and come back with a
one-line message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

import asyncq.dashboard.actions as actions
from asyncq.__about__ import __version__
from asyncq.dashboard.actions import Action, service
from asyncq.dashboard.auth import SESSION_COOKIE, SESSION_SECONDS, Auth
from asyncq.dashboard.history import EVENT_STATES
from asyncq.dashboard.service import ActionError, Outcome
from asyncq.dashboard.web import HERE, act, dashboard_of, safe_path, task_filter

__all__ = ["routes"]

_STATES: Final = sorted(set(EVENT_STATES.values()))


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return _seconds(max(0.0, time.time() - value)) + " ago"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _megabytes(value: Any) -> str:
    return f"{value / 1e6:.0f} MB" if isinstance(value, int | float) else ""


_TEMPLATES = HERE / "templates"

# Read once at import: a FileSystemLoader would read (and stat, to check for edits) the files
# from inside the event loop on every page.
ENV: Final = jinja2.Environment(
    loader=jinja2.DictLoader(
        {
            p.relative_to(_TEMPLATES).as_posix(): p.read_text(encoding="utf-8")
            for p in _TEMPLATES.rglob("*.html")
        }
    ),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=_when, ago=_ago, seconds=_seconds, short=_short, megabytes=_megabytes)
ENV.globals.update(version=__version__, states=_STATES)


def _render(request: Request, page: str, live: str | None, **context: Any) -> Response:
    root = str(request.scope.get("root_path") or "")
    dashboard = dashboard_of(request)
    context.update(
        root=root,
        path=request.url.path[len(root) :] or "/",
        query=request.url.query,
        csrf=Auth.csrf_token(request),
        logged_in=dashboard.auth.required,
        msg=request.query_params.get("msg"),
        error=request.query_params.get("error"),
        app_name=dashboard.app.main,
        request_query=request.query_params,
    )
    name = live if live and request.query_params.get("partial") else page
    response = HTMLResponse(ENV.get_template(name).render(**context))
    return Auth.set_csrf_cookie(request, response)


def _page(page: str, live: str | None, load: Callable[[Request], Awaitable[dict[str, Any]]]) -> Any:
    async def handler(request: Request) -> Response:
        try:
            context = await load(request)
        except ActionError as exc:
            response = _render(request, "error.html", None, message=str(exc))
            response.status_code = exc.status
            return response
        return _render(request, page, live, **context)

    return handler


async def _overview(request: Request) -> dict[str, Any]:
    return {"overview": await service(request).overview()}


async def _workers(request: Request) -> dict[str, Any]:
    return {"workers": await service(request).workers()}


async def _tasks(request: Request) -> dict[str, Any]:
    where = task_filter(request)
    raw = request.query_params.get("offset") or "0"
    offset = int(raw) if raw.isdigit() else 0
    listing = await service(request).tasks(where, limit=50, offset=offset)
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "partial", "msg", "error")}
    return {"listing": listing, "where": where, "params": params, "urlencode": urlencode}


async def _task(request: Request) -> dict[str, Any]:
    return {"detail": await service(request).task(request.path_params["task_id"])}


async def _dead_letters(request: Request) -> dict[str, Any]:
    queue = request.query_params.get("queue") or None
    return {"letters": await service(request).dead_letters(queue, limit=200), "queue": queue}


async def _dead_letter(request: Request) -> dict[str, Any]:
    return {"letter": await service(request).dead_letter(request.path_params["message_id"])}


async def _scheduled(request: Request) -> dict[str, Any]:
    return {"entries": await service(request).scheduled()}


async def _queues(request: Request) -> dict[str, Any]:
    return {"queues": await service(request).queues()}


# -- login ---------------------------------------------------------------------------------------


async def _login(request: Request) -> Response:
    auth = dashboard_of(request).auth
    root = str(request.scope.get("root_path") or "")
    target = safe_path(request.query_params.get("next") or "/")
    if request.method == "GET":
        return _render(request, "login.html", None, next=target, uses_token=auth.uses_token, failed=False)
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    if not auth.csrf_valid(request, form):
        return PlainTextResponse("missing or wrong CSRF token (reload the page)", status_code=403)
    throttle = auth.throttle
    keys = throttle.keys(request.client.host if request.client else None, form.get("username"))
    wait = throttle.retry_after(keys)
    if wait:
        # Refused unheard, right credentials or not, so guessing cannot outpace the limit.
        response = _render(
            request, "login.html", None, next=target, uses_token=auth.uses_token, failed=False, wait=wait
        )
        response.status_code = 429
        response.headers["Retry-After"] = str(wait)
        return response
    if not auth.check_login(form):
        throttle.failed(keys)
        response = _render(request, "login.html", None, next=target, uses_token=auth.uses_token, failed=True)
        response.status_code = 401
        return response
    throttle.succeeded(keys)
    response = RedirectResponse(root + target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=SESSION_SECONDS,
        path=root + "/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def _logout(request: Request) -> Response:
    async def out(_: dict[str, Any]) -> Outcome:
        return Outcome("logged out")

    response = await act(request, out, api=False)
    response.delete_cookie(SESSION_COOKIE, path=str(request.scope.get("root_path") or "") + "/")
    return response


# -- actions (forms) -----------------------------------------------------------------------------


def _form(run: Action) -> Any:
    async def handler(request: Request) -> Response:
        return await act(request, lambda fields: run(request, fields), api=False)

    return handler


# -- other ---------------------------------------------------------------------------------------


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _metrics(request: Request) -> Response:
    """The cluster's task metrics (folded from the events) and queue lengths, for Prometheus."""
    metrics = dashboard_of(request).metrics
    if not metrics.enabled:
        return PlainTextResponse("metrics need asyncq[metrics] (prometheus_client)\n", status_code=404)
    body, content_type = await metrics.scrape(service(request), request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


def routes() -> list[BaseRoute]:
    """The pages, their form actions, the login, ``/healthz`` and ``/metrics``."""
    return [
        Route("/", _page("overview.html", "overview_live.html", _overview)),
        Route("/workers", _page("workers.html", "workers_live.html", _workers)),
        Route("/tasks", _page("tasks.html", "tasks_live.html", _tasks)),
        Route("/tasks/{task_id}", _page("task.html", "task_live.html", _task)),
        Route("/tasks/{task_id}/revoke", _form(actions.revoke), methods=["POST"]),
        Route("/tasks/{task_id}/retry", _form(actions.retry), methods=["POST"]),
        Route("/workers/{hostname}/{action}", _form(actions.worker_action()), methods=["POST"]),
        Route("/dead-letters", _page("dead_letters.html", "dead_letters_live.html", _dead_letters)),
        Route("/dead-letters/requeue-all", _form(actions.requeue_all), methods=["POST"]),
        Route("/dead-letters/purge", _form(actions.purge_dead_letters), methods=["POST"]),
        Route("/dead-letters/{message_id}", _page("dead_letter.html", None, _dead_letter)),
        Route("/dead-letters/{message_id}/requeue", _form(actions.requeue), methods=["POST"]),
        Route("/scheduled", _page("scheduled.html", None, _scheduled)),
        Route("/scheduled/{name}/enable", _form(actions.set_entry_enabled(True)), methods=["POST"]),
        Route("/scheduled/{name}/disable", _form(actions.set_entry_enabled(False)), methods=["POST"]),
        Route("/queues", _page("queues.html", "queues_live.html", _queues)),
        Route("/queues/{queue}/purge", _form(actions.purge_queue), methods=["POST"]),
        Route("/login", _login, methods=["GET", "POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Route("/healthz", _healthz),
        Route("/metrics", _metrics),
    ]
