"""The dashboard's JSON API under ``/api``: everything the pages show and do, described by OpenAPI.

Reads are GETs; actions are POSTs with a JSON (or form) body, a CSRF token (header
``X-CSRF-Token``, from ``GET /api/csrf``) or a bearer token, and answer
``{"ok": true, "message": ..., "details": ...}`` or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

import asyncq.dashboard.actions as actions
from asyncq.__about__ import __version__
from asyncq.dashboard.actions import Action, service
from asyncq.dashboard.auth import Auth
from asyncq.dashboard.service import ActionError
from asyncq.dashboard.web import act, dashboard_of, task_filter

__all__ = ["ENDPOINTS", "openapi", "routes"]

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One API route and what the OpenAPI document says of it."""

    method: str
    path: str
    summary: str
    handler: Handler
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()


def _int(request: Request, key: str, default: int) -> int:
    raw = request.query_params.get(key)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ActionError(f"{key} must be a whole number, got {raw!r}") from None


def _read(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            data = await fn(request)
        except ActionError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=exc.status)
        return JSONResponse(data)

    return handler


def _action(fn: Action) -> Handler:
    async def handler(request: Request) -> Response:
        return await act(request, lambda fields: fn(request, fields), api=True)

    return handler


# -- reads ---------------------------------------------------------------------------------------


async def _overview(request: Request) -> Any:
    return await service(request).overview()


async def _workers(request: Request) -> Any:
    return await service(request).workers()


async def _queues(request: Request) -> Any:
    return await service(request).queues()


async def _tasks(request: Request) -> Any:
    where = task_filter(request)
    return await service(request).tasks(
        where, limit=_int(request, "limit", 50), offset=_int(request, "offset", 0)
    )


async def _task(request: Request) -> Any:
    return await service(request).task(request.path_params["task_id"])


async def _dead_letters(request: Request) -> Any:
    queue = request.query_params.get("queue") or None
    return await service(request).dead_letters(queue, limit=_int(request, "limit", 100))


async def _dead_letter(request: Request) -> Any:
    return await service(request).dead_letter(request.path_params["message_id"])


async def _scheduled(request: Request) -> Any:
    return await service(request).scheduled()


async def _csrf(request: Request) -> Response:
    response = JSONResponse({"csrf": Auth.csrf_token(request)})
    return Auth.set_csrf_cookie(request, response)


async def _events(request: Request) -> Response:
    """Server-sent change notices: ``event: tasks`` and ``event: workers``."""
    feed = dashboard_of(request).feed
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(feed.listen(), media_type="text/event-stream", headers=headers)


# -- actions -------------------------------------------------------------------------------------


_WORKER_ACTIONS: Final = {
    "shutdown": ("Stop the worker gracefully", ()),
    "pool-resize": ("Set how many tasks the worker runs at once", ("concurrency",)),
    "rate-limit": ("Set a task's rate limit on the worker (empty rate removes it)", ("task", "rate")),
    "add-consumer": ("Make the worker consume a queue too", ("queue",)),
    "cancel-consumer": ("Make the worker stop consuming a queue", ("queue",)),
}

ENDPOINTS: Final = (
    Endpoint("GET", "/api/overview", "Workers, queues, rates and the history's size", _read(_overview)),
    Endpoint("GET", "/api/workers", "Every known worker with its latest stats", _read(_workers)),
    Endpoint("GET", "/api/queues", "Each known queue: length, dead letters, consumers", _read(_queues)),
    Endpoint(
        "GET",
        "/api/tasks",
        "The task history, most recent first",
        _read(_tasks),
        query=("state", "name", "queue", "worker", "q", "since", "within", "limit", "offset"),
    ),
    Endpoint("GET", "/api/tasks/{task_id}", "One task: history, result, traceback, children", _read(_task)),
    Endpoint(
        "POST", "/api/tasks/{task_id}/revoke", "Revoke a task", _action(actions.revoke), body=("terminate",)
    ),
    Endpoint("POST", "/api/tasks/{task_id}/retry", "Send a task again as a new task", _action(actions.retry)),
    *(
        Endpoint(
            "POST",
            f"/api/workers/{{hostname}}/{name}",
            summary,
            _action(actions.worker_action(name)),
            body=body,
        )
        for name, (summary, body) in _WORKER_ACTIONS.items()
    ),
    Endpoint(
        "GET",
        "/api/dead-letters",
        "Dead letters, oldest first",
        _read(_dead_letters),
        query=("queue", "limit"),
    ),
    Endpoint("GET", "/api/dead-letters/{message_id}", "One dead letter and its task", _read(_dead_letter)),
    Endpoint(
        "POST", "/api/dead-letters/{message_id}/requeue", "Requeue one dead letter", _action(actions.requeue)
    ),
    Endpoint(
        "POST",
        "/api/dead-letters/requeue-all",
        "Requeue every dead letter",
        _action(actions.requeue_all),
        body=("queue",),
    ),
    Endpoint(
        "POST",
        "/api/dead-letters/purge",
        "Drop every dead letter",
        _action(actions.purge_dead_letters),
        body=("queue",),
    ),
    Endpoint(
        "POST",
        "/api/queues/{queue}/purge",
        "Drop every waiting message of a queue",
        _action(actions.purge_queue),
    ),
    Endpoint(
        "GET", "/api/scheduled", "Beat entries, enabled or not, with their next run times", _read(_scheduled)
    ),
    Endpoint(
        "POST",
        "/api/scheduled/{name}/enable",
        "Let every beat send a periodic entry again",
        _action(actions.set_entry_enabled(True)),
    ),
    Endpoint(
        "POST",
        "/api/scheduled/{name}/disable",
        "Stop every beat sending a periodic entry (it stays listed)",
        _action(actions.set_entry_enabled(False)),
    ),
    Endpoint("GET", "/api/csrf", "A CSRF token (also set as the asyncq_csrf cookie)", _csrf),
    Endpoint("GET", "/api/events", "Server-sent change notices (event: tasks | workers)", _events),
)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ENDPOINTS`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        parameters: list[dict[str, Any]] = [
            {"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
            for name in endpoint.path.split("/")
            if name.startswith("{")
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in endpoint.query
        ]
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.method.lower()
            + endpoint.path.replace("/", "_").replace("{", "").replace("}", ""),
            "parameters": parameters,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "4XX": {"description": "Refused: {ok: false, error}", "content": {"application/json": {}}},
            },
        }
        if endpoint.method == "POST":
            operation["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {name: {"type": "string"} for name in endpoint.body},
                        }
                    }
                },
            }
            operation["parameters"].append(
                {"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"}}
            )
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "asyncq dashboard", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi())


def routes() -> list[BaseRoute]:
    """The API's routes, the OpenAPI document at ``/api/openapi.json`` and ``/metrics``."""
    found: list[BaseRoute] = [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS]
    found.append(Route("/api/openapi.json", _openapi, methods=["GET"]))
    return found
