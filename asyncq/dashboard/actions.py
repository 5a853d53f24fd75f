"""The dashboard's actions as ``(request, fields) -> Outcome``: the API's and the pages' forms share them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from asyncq.dashboard.service import DashboardService, Outcome
from asyncq.dashboard.web import dashboard_of

__all__ = [
    "Action",
    "purge_dead_letters",
    "purge_queue",
    "requeue",
    "requeue_all",
    "retry",
    "revoke",
    "service",
    "set_entry_enabled",
    "worker_action",
]

Action = Callable[[Request, dict[str, Any]], Awaitable[Outcome]]


def service(request: Request) -> DashboardService:
    return dashboard_of(request).service


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true", "on", "yes")


async def revoke(request: Request, fields: dict[str, Any]) -> Outcome:
    task_id = request.path_params["task_id"]
    return await service(request).revoke(task_id, terminate=_flag(fields.get("terminate")))


async def retry(request: Request, fields: dict[str, Any]) -> Outcome:
    return await service(request).retry(request.path_params["task_id"])


def worker_action(action: str | None = None) -> Action:
    """The runner of one worker action (``None``: the action named in the path)."""

    async def run(request: Request, fields: dict[str, Any]) -> Outcome:
        form = {key: str(value) for key, value in fields.items() if value is not None}
        name = action or request.path_params["action"]
        return await service(request).worker_action(request.path_params["hostname"], name, form)

    return run


async def requeue(request: Request, fields: dict[str, Any]) -> Outcome:
    return await service(request).requeue(request.path_params["message_id"])


async def requeue_all(request: Request, fields: dict[str, Any]) -> Outcome:
    return await service(request).requeue_all(fields.get("queue") or None)


async def purge_dead_letters(request: Request, fields: dict[str, Any]) -> Outcome:
    return await service(request).purge_dead_letters(fields.get("queue") or None)


async def purge_queue(request: Request, fields: dict[str, Any]) -> Outcome:
    return await service(request).purge_queue(request.path_params["queue"])


def set_entry_enabled(enabled: bool) -> Action:
    """The runner that enables (or disables) the beat entry named in the path."""

    async def run(request: Request, fields: dict[str, Any]) -> Outcome:
        return await service(request).set_entry_enabled(request.path_params["name"], enabled)

    return run
