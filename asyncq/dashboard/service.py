"""What the dashboard shows and does, as JSON-ready data: the one layer both the pages and the API use.

Reads go to the history (tasks), the presence records (workers), the broker (queue lengths,
dead letters) and the result backend (a task's result and traceback); actions go through
``app.control``, ``app.dead_letters`` and the broker, so the dashboard can do nothing the CLI
cannot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from asyncq._utils import redact_url
from asyncq.control import ControlReply, to_json
from asyncq.deadletters import describe
from asyncq.exceptions import AsyncqError, SerializationError
from asyncq.result import decode_record
from asyncq.scheduler import upcoming

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.dashboard.history import TaskFilter, TaskHistory

__all__ = ["ActionError", "DashboardService"]

logger = logging.getLogger(__name__)

_TIMEOUT: Final = 5.0  # seconds any one read or action of the dashboard may take


class ActionError(Exception):
    """An action the dashboard refused or could not do; its message is shown to the user."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: a one-line message and the details (per worker, or counts)."""

    message: str
    details: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "message": self.message, "details": self.details}


def _replies(replies: dict[str, ControlReply], what: str) -> Outcome:
    if not replies:
        raise ActionError(f"no worker answered {what}", status=504)
    failed = [f"{worker}: {reply.message}" for worker, reply in replies.items() if not reply.ok]
    if failed:
        raise ActionError(f"{what} failed on " + "; ".join(failed))
    return Outcome(f"{what}: done by {', '.join(sorted(replies))}", to_json(replies))


async def _deadline(awaitable: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, _TIMEOUT)
    except TimeoutError:
        raise ActionError(f"{what} did not answer within {_TIMEOUT:g} s", status=504) from None
    except AsyncqError as exc:
        raise ActionError(f"{what} failed: {exc}", status=502) from None


class DashboardService:
    """The dashboard's reads and actions over one app and its task history."""

    def __init__(self, app: App, history: TaskHistory) -> None:
        self.app = app
        self.history = history

    # -- reads -----------------------------------------------------------------------------------

    async def workers(self) -> list[dict[str, Any]]:
        """Every worker the presence records know (lost ones flagged), with its latest stats."""
        statuses = await _deadline(self.app.control.workers(timeout=_TIMEOUT), "the presence records")
        found: list[dict[str, Any]] = to_json(statuses)
        for status, worker in zip(statuses, found, strict=True):
            worker["stats"]["held"] = status.stats.held  # messages waiting on their limits
        return found

    async def queue_names(self, workers: Sequence[dict[str, Any]] = ()) -> list[str]:
        """The queues the app, its workers and the history know."""
        names = list(self.app.dead_letters.queues())
        for worker in workers:
            names += worker["stats"].get("queues") or []
        names += await self.history.distinct("queue", limit=50)
        return list(dict.fromkeys(names))

    async def queues(self, workers: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Each known queue with its length, dead letters and the workers consuming it."""
        if workers is None:
            workers = await self.workers()
        await _deadline(self.app.connect(), "the broker")
        broker = self.app.broker
        rows = []
        for name in await self.queue_names(workers):
            length = await _deadline(broker.queue_length(name), f"the length of {name!r}")
            dead = await _deadline(broker.dead_letters(name, limit=1000), f"the dead letters of {name!r}")
            consumers = [
                w["hostname"]
                for w in workers
                if not w["is_lost"] and name in (w["stats"].get("queues") or [])
            ]
            rows.append({"name": name, "length": length, "dead_letters": len(dead), "consumers": consumers})
        return rows

    async def overview(self) -> dict[str, Any]:
        """Workers, queues, rates over the last minute and the history's size, on one page."""
        workers = await self.workers()
        return {
            "app": self.app.main,
            "broker": redact_url(self.app.broker_url),
            "backend": redact_url(self.app.backend_url),
            "workers": workers,
            "queues": await self.queues(workers),
            "rates": await self.history.rates(60.0),
            "timeline": await self.history.timeline(3600.0, 60.0),
            "states": await self.history.states(),
            "history": {
                "tasks": await self.history.count(),
                "limit": self.history.limit,
                "expires": self.history.expires,
            },
            "time": time.time(),
        }

    async def tasks(self, where: TaskFilter, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of the task list and the filter menus."""
        if not 1 <= limit <= 500:
            raise ActionError(f"limit must be between 1 and 500, got {limit}")
        if offset < 0:
            raise ActionError(f"offset must be >= 0, got {offset}")
        return {
            "tasks": await self.history.tasks(where, limit=limit, offset=offset),
            "total": await self.history.count(where),
            "limit": limit,
            "offset": offset,
            "names": await self.history.distinct("name"),
            "queues": await self.history.distinct("queue"),
            "workers": await self.history.distinct("worker"),
        }

    async def task(self, task_id: str) -> dict[str, Any]:
        """One task: its history row, its result record (result, exception, traceback), its children."""
        row = await self.history.get(task_id)
        raw = await _deadline(self.app.backend.get(task_id), "the result backend")
        record: dict[str, Any] | None = None
        if raw is not None:
            try:
                decoded = decode_record(raw, self.app.serializers)
            except SerializationError as exc:
                record = {"undecodable": str(exc)}
            else:
                record = {
                    "status": str(decoded.status),
                    "result": _shown(decoded.result),
                    "exc_type": decoded.exc_type,
                    "exc_message": decoded.exc_message,
                    "traceback": decoded.traceback,
                    "retries": decoded.retries,
                    "date_done": decoded.date_done,
                    "children": decoded.children or [],
                    "meta": decoded.meta,
                }
        if row is None and record is None:
            raise ActionError(f"no task {task_id!r} in the history or the result backend", status=404)
        children = [child["id"] for child in await self.history.children(task_id)]
        children += [c for c in (record or {}).get("children", []) if c not in children]
        return {"id": task_id, "task": row, "record": record, "children": children}

    async def dead_letters(self, queue: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """The dead letters of ``queue`` (every known queue when None), oldest first."""
        if not 1 <= limit <= 1000:
            raise ActionError(f"limit must be between 1 and 1000, got {limit}")
        letters = await _deadline(self.app.dead_letters.list(queue, limit=limit), "the broker")
        return [describe(letter, self.app) for letter in letters]

    async def dead_letter(self, message_id: str, queue: str | None = None) -> dict[str, Any]:
        """One dead letter, with the task message it holds."""
        letter = await _deadline(self.app.dead_letters.show(message_id, queue), "the broker")
        if letter is None:
            raise ActionError(f"no dead letter {message_id!r}", status=404)
        return describe(letter, self.app)

    async def scheduled(self) -> list[dict[str, Any]]:
        """Every beat entry, enabled or not, with the next three run times of the enabled ones."""
        entries = await _deadline(upcoming(self.app, 3, include_disabled=True), "the beat schedule")
        _, disabled = await _deadline(self.app.schedule.snapshot(), "the beat schedule")
        return [
            {
                "name": entry.name,
                "task": entry.task,
                "schedule": str(entry.schedule),
                "args": list(entry.args),
                "kwargs": entry.kwargs,
                "queue": entry.options.get("queue"),
                "enabled": entry.name not in disabled,
                "next": [tick.isoformat() for tick in ticks],
            }
            for entry, ticks in entries
        ]

    # -- actions ---------------------------------------------------------------------------------

    async def revoke(self, task_id: str, *, terminate: bool = False) -> Outcome:
        """Revoke a task (``terminate`` stops it while it runs)."""
        await _deadline(self.app.control.revoke(task_id, terminate=terminate), "revoke")
        verb = "terminated" if terminate else "revoked"
        return Outcome(f"task {task_id} {verb}")

    async def retry(self, task_id: str) -> Outcome:
        """Send the task again with the same name, arguments and queue, as a new task."""
        row = await self.history.get(task_id)
        if row is None or not row.get("name"):
            raise ActionError(f"task {task_id!r} is not in the history: its name is unknown", status=404)
        if row.get("args") is None:
            raise ActionError(
                "its arguments are unknown: the workers send them only with events_include_args on"
            )
        options: dict[str, Any] = {"queue": row["queue"]} if row.get("queue") else {}
        result = await _deadline(
            self.app.send_task(row["name"], row["args"], row.get("kwargs") or {}, **options), "the broker"
        )
        return Outcome(f"task {task_id} sent again as {result.id}", {"id": result.id})

    async def worker_action(self, hostname: str, action: str, form: dict[str, str]) -> Outcome:
        """shutdown, pool-resize, rate-limit, add-consumer or cancel-consumer on one worker."""
        control = self.app.control
        target = [hostname]
        if action == "shutdown":
            replies = await _deadline(control.shutdown(destination=target, timeout=2.0), "shutdown")
        elif action == "pool-resize":
            concurrency = _integer(form.get("concurrency"), "concurrency")
            if concurrency < 1:
                raise ActionError(f"concurrency must be at least 1, got {concurrency}")
            replies = await _deadline(
                control.pool_resize(concurrency, destination=target, timeout=2.0), action
            )
        elif action == "rate-limit":
            task = _required(form, "task")
            rate = form.get("rate", "").strip() or None
            replies = await _deadline(control.rate_limit(task, rate, destination=target, timeout=2.0), action)
        elif action in ("add-consumer", "cancel-consumer"):
            queue = _required(form, "queue")
            call = control.add_consumer if action == "add-consumer" else control.cancel_consumer
            replies = await _deadline(call(queue, destination=target, timeout=2.0), action)
        else:
            raise ActionError(f"unknown worker action {action!r}", status=404)
        return _replies(replies, f"{action} on {hostname}")

    async def set_entry_enabled(self, name: str, enabled: bool) -> Outcome:
        """Enable or disable a beat entry for every scheduler sharing the result backend."""
        schedule = self.app.schedule
        change = schedule.enable(name) if enabled else schedule.disable(name)
        if not await _deadline(change, "the beat schedule"):
            raise ActionError(f"no periodic entry {name!r}", status=404)
        return Outcome(f"periodic entry {name} {'enabled' if enabled else 'disabled'}")

    async def requeue(self, message_id: str) -> Outcome:
        """Send one dead letter back to its queue."""
        if not await _deadline(self.app.dead_letters.requeue(message_id), "the broker"):
            raise ActionError(f"no dead letter {message_id!r}", status=404)
        return Outcome(f"dead letter {message_id} requeued")

    async def requeue_all(self, queue: str | None) -> Outcome:
        """Send every dead letter of ``queue`` (every known queue when None) back."""
        count = await _deadline(self.app.dead_letters.requeue_all(queue), "the broker")
        return Outcome(f"{count} dead letters requeued", {"count": count})

    async def purge_dead_letters(self, queue: str | None) -> Outcome:
        """Drop every dead letter of ``queue`` (every known queue when None)."""
        count = await _deadline(self.app.dead_letters.purge(queue), "the broker")
        return Outcome(f"{count} dead letters purged", {"count": count})

    async def purge_queue(self, queue: str) -> Outcome:
        """Drop every message waiting in ``queue``."""
        count = await _deadline(self.app.purge(queue), "the broker")
        return Outcome(f"{count} messages purged from {queue}", {"count": count})


def _shown(value: Any) -> Any:
    text = repr(value) if not isinstance(value, str | int | float | bool | type(None) | list | dict) else None
    return value if text is None else text[:2000]


def _required(form: dict[str, str], key: str) -> str:
    value = (form.get(key) or "").strip()
    if not value:
        raise ActionError(f"{key} is required")
    return value


def _integer(value: str | None, key: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ActionError(f"{key} must be a whole number, got {value!r}") from None
