"""The dashboard's task history: task events folded into one SQLite row per task, capped and expiring.

Rows live on disk, not in memory, so a restarted dashboard shows the same history and its memory
stays flat however many events arrive; the cap (``dashboard_history_limit`` tasks) and the expiry
(``dashboard_history_expires`` seconds since a task's last event) bound the file too. Events may
arrive twice or out of order (replayed bus history, several workers): folding is idempotent and a
task's state only moves to the state of a newer event.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["EVENT_STATES", "TaskFilter", "TaskHistory"]

#: The state a task is in after each task event.
EVENT_STATES: Final = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
    "task-dead-lettered": "DEAD_LETTERED",
}

_COLUMNS: Final = (
    "id", "name", "state", "queue", "worker", "args", "kwargs", "retries", "root_id", "parent_id",
    "sent", "received", "started", "finished", "runtime", "exc_type", "exc_message", "updated",
)  # fmt: skip

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, name TEXT, state TEXT NOT NULL, queue TEXT, worker TEXT,
    args TEXT, kwargs TEXT, retries INTEGER NOT NULL DEFAULT 0, root_id TEXT, parent_id TEXT,
    sent REAL, received REAL, started REAL, finished REAL, runtime REAL,
    exc_type TEXT, exc_message TEXT, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks (updated);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, updated);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks (name, updated);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (queue, updated);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks (worker, updated);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent_id);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS menus (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
"""

#: Ties between events of one timestamp go to the state further along (a float timestamp cannot
#: tell apart events less than a microsecond apart), so the outcome never depends on arrival order.
_RANK: Final = {state: rank for rank, state in enumerate(
    ("PENDING", "RECEIVED", "STARTED", "RETRY", "REJECTED", "REVOKED", "FAILURE", "SUCCESS", "DEAD_LETTERED")
)}  # fmt: skip


def _rank_sql(column: str) -> str:
    cases = " ".join(f"WHEN '{state}' THEN {rank}" for state, rank in _RANK.items())
    return f"(CASE {column} {cases} ELSE 0 END)"


# The state of the newest event (by timestamp, then rank) wins, whatever order they arrive in.
# task-sent never sets it: the producer stamps it after the publish returns, which may be after a
# worker took the task (and sent task-received); nor does a row only task-sent made (PENDING)
# hold back any worker event, however stamped. So ``updated`` is the time of the event that set
# the state (task-sent's, until a worker event comes).
_UPSERT: Final = """
INSERT INTO tasks (id, name, state, queue, worker, args, kwargs, retries, root_id, parent_id,
                   sent, received, started, finished, runtime, exc_type, exc_message, updated)
VALUES (:id, :name, :state, :queue, :worker, :args, :kwargs, :retries, :root_id, :parent_id,
        :sent, :received, :started, :finished, :runtime, :exc_type, :exc_message, :updated)
ON CONFLICT (id) DO UPDATE SET
    name = COALESCE(excluded.name, name),
    queue = COALESCE(excluded.queue, queue),
    worker = COALESCE(excluded.worker, worker),
    args = COALESCE(excluded.args, args),
    kwargs = COALESCE(excluded.kwargs, kwargs),
    retries = MAX(excluded.retries, retries),
    root_id = COALESCE(excluded.root_id, root_id),
    parent_id = COALESCE(excluded.parent_id, parent_id),
    sent = COALESCE(sent, excluded.sent),
    received = COALESCE(excluded.received, received),
    started = COALESCE(excluded.started, started),
    finished = COALESCE(excluded.finished, finished),
    runtime = COALESCE(excluded.runtime, runtime),
    exc_type = COALESCE(excluded.exc_type, exc_type),
    exc_message = COALESCE(excluded.exc_message, exc_message),
    state = CASE WHEN excluded.state = 'PENDING' THEN state
                 WHEN state = 'PENDING' THEN excluded.state
                 WHEN excluded.updated > updated THEN excluded.state
                 WHEN excluded.updated = updated AND RANK_NEW > RANK_OLD THEN excluded.state
                 ELSE state END,
    updated = CASE WHEN excluded.state = 'PENDING' THEN updated
                   WHEN state = 'PENDING' THEN excluded.updated
                   ELSE MAX(excluded.updated, updated) END
""".replace("RANK_NEW", _rank_sql("excluded.state")).replace("RANK_OLD", _rank_sql("state"))

_TRIM_EVERY: Final = 2_000  # rows written between two trims (counting rows is a table scan)
_MENU_REBUILD_EVERY: Final = 50  # trims between two rebuilds of the filter menus (a scan each)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a list shows: each field narrows it when set; ``search`` matches ids by prefix."""

    state: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    search: str | None = None
    since: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("state", "name", "queue", "worker"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.search:  # an id prefix, as a range: the primary key's index answers it
            clauses.append("id >= ? AND id < ?")
            params += [self.search, self.search + "\U0010ffff"]
        if self.since is not None:
            clauses.append("updated >= ?")
            params.append(self.since)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _row(event: dict[str, Any]) -> dict[str, Any] | None:
    kind = event.get("type")
    state = EVENT_STATES.get(kind) if isinstance(kind, str) else None
    task_id = event.get("id") or event.get("uuid")
    if state is None or not isinstance(task_id, str):
        return None
    timestamp = float(event.get("timestamp") or time.time())
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(
        id=task_id,
        name=event.get("name"),
        state=state,
        queue=event.get("queue"),
        worker=None if kind == "task-sent" else event.get("hostname"),
        retries=int(event.get("retries") or 0),
        root_id=event.get("root_id"),
        parent_id=event.get("parent_id"),
        updated=timestamp,
    )
    if "args" in event:
        row["args"] = json.dumps(event["args"])
        row["kwargs"] = json.dumps(event.get("kwargs") or {})
    if kind == "task-sent":
        row["sent"] = timestamp
    elif kind == "task-received":
        row["received"] = timestamp
    elif kind == "task-started":
        row["started"] = timestamp
    elif state in ("SUCCESS", "FAILURE", "REVOKED", "REJECTED", "DEAD_LETTERED"):
        row["finished"] = timestamp
    if isinstance(event.get("runtime"), int | float):
        row["runtime"] = float(event["runtime"])
    exc_type = event.get("exception_type")
    if kind in ("task-failed", "task-retried") and exc_type:
        row["exc_type"] = str(exc_type)
        row["exc_message"] = str(event.get("exception_message") or "")
    elif kind in ("task-revoked", "task-rejected", "task-dead-lettered") and event.get("reason"):
        row["exc_message"] = str(event["reason"])
    return row


_LATEST: Final = ("name", "queue", "worker", "args", "kwargs", "root_id", "parent_id", "received",
                   "started", "finished", "runtime", "exc_type", "exc_message")  # fmt: skip


def _merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task for a batch (a task's events mostly travel together): a third of the writes.

    The same rules as the upsert's: the newest non-null value, the first sent time, the most
    retries, and the state of the newest event other than task-sent (ties: the highest rank).
    """
    merged: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["updated"], _RANK[r["state"]])):
        seen = merged.get(row["id"])
        if seen is None:
            merged[row["id"]] = row
            continue
        for key in _LATEST:
            if row[key] is not None:
                seen[key] = row[key]
        seen["sent"] = seen["sent"] if seen["sent"] is not None else row["sent"]
        seen["retries"] = max(seen["retries"], row["retries"])
        if row["state"] != "PENDING":
            seen["state"], seen["updated"] = row["state"], row["updated"]
    return list(merged.values())


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    task = dict(row)
    for key in ("args", "kwargs"):
        if task[key] is not None:
            task[key] = json.loads(task[key])
    return task


class TaskHistory:
    """One row per task, in a SQLite file; every method is safe to call from the event loop.

    Args:
        path: the database file (created with its folder); ``":memory:"`` for a throwaway one.
        limit: the most tasks kept (the least recently updated go first).
        expires: seconds after its last event that a task is dropped.
    """

    def __init__(self, path: str | Path, *, limit: int = 100_000, expires: float = 7 * 86400.0) -> None:
        if limit < 1:
            raise ValueError(f"dashboard_history_limit must be at least 1, got {limit}")
        if expires <= 0:
            raise ValueError(f"dashboard_history_expires must be > 0, got {expires}")
        self.path = str(path)
        self.limit = limit
        self.expires = expires
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock, used from worker threads so queries never block the loop.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._since_trim = 0
        self._trims = 0
        with self._lock, self._conn:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    # -- writing ---------------------------------------------------------------------------------

    def add_sync(self, events: Iterable[dict[str, Any]]) -> list[str]:
        """Fold ``events`` in (others than task events are ignored); the ids of the tasks changed."""
        rows = _merge([row for row in map(_row, events) if row is not None])
        if not rows:
            return []
        menus = {(kind, row[kind]) for row in rows for kind in ("name", "queue", "worker") if row[kind]}
        with self._lock, self._conn:
            self._conn.executemany(_UPSERT, rows)
            self._conn.executemany("INSERT OR IGNORE INTO menus VALUES (?, ?)", sorted(menus))
            newest = max(row["updated"] for row in rows)
            self._conn.execute(
                "INSERT INTO meta VALUES ('newest', ?) ON CONFLICT (key) DO UPDATE SET value = "
                "MAX(value, excluded.value)",
                (newest,),
            )
            self._since_trim += len(rows)
            if self._since_trim >= _TRIM_EVERY:
                self._trim()
        return [row["id"] for row in rows]

    async def add(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """:meth:`add_sync` off the event loop."""
        return await asyncio.to_thread(self.add_sync, events)

    def _trim(self) -> None:
        self._since_trim = 0
        self._trims += 1
        if self._trims % _MENU_REBUILD_EVERY == 0:  # forget the menus' values no kept task has
            self._conn.execute("DELETE FROM menus")
            for kind in ("name", "queue", "worker"):
                self._conn.execute(
                    f"INSERT INTO menus SELECT DISTINCT ?, {kind} FROM tasks WHERE {kind} IS NOT NULL",  # noqa: S608
                    (kind,),
                )
        self._conn.execute("DELETE FROM tasks WHERE updated < ?", (time.time() - self.expires,))
        (count,) = self._conn.execute("SELECT count(*) FROM tasks").fetchone()
        if count > self.limit:
            self._conn.execute(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks ORDER BY updated LIMIT ?)",
                (count - self.limit,),
            )

    async def trim(self) -> None:
        """Drop the expired tasks and those over the cap now (writes also do it every so often)."""

        def trim() -> None:
            with self._conn:
                self._trim()

        await self._run(trim)

    # -- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    async def tasks(self, where: TaskFilter, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The tasks matching ``where``, most recently updated first."""
        clause, params = where.where()
        sql = f"SELECT * FROM tasks{clause} ORDER BY updated DESC LIMIT ? OFFSET ?"  # noqa: S608 - fixed columns
        rows = await self._run(self._query, sql, [*params, limit, offset])
        return [_decode(row) for row in rows]

    async def count(self, where: TaskFilter | None = None) -> int:
        """How many tasks match ``where`` (all kept tasks when None)."""
        clause, params = (where or TaskFilter()).where()
        rows = await self._run(self._query, f"SELECT count(*) FROM tasks{clause}", params)  # noqa: S608
        return int(rows[0][0])

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """One task's row, or None when it is not (or no longer) in the history."""
        rows = await self._run(self._query, "SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _decode(rows[0]) if rows else None

    async def children(self, task_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The tasks whose parent is ``task_id``."""
        rows = await self._run(
            self._query, "SELECT * FROM tasks WHERE parent_id = ? ORDER BY updated LIMIT ?", (task_id, limit)
        )
        return [_decode(row) for row in rows]

    async def rates(self, window: float = 60.0) -> dict[str, float]:
        """Tasks finished per second over the last ``window`` seconds, and how many of them failed."""
        since = time.time() - window
        rows = await self._run(
            self._query, "SELECT state, count(*) FROM tasks WHERE finished >= ? GROUP BY state", (since,)
        )
        by_state = {str(state): int(count) for state, count in rows}
        done = sum(by_state.values())
        failed = by_state.get("FAILURE", 0) + by_state.get("DEAD_LETTERED", 0)
        return {"window": window, "finished": done, "failed": failed, "per_second": round(done / window, 3)}

    async def timeline(self, window: float = 3600.0, step: float = 60.0) -> list[dict[str, Any]]:
        """Per ``step`` over the last ``window`` seconds: tasks finished, failed, and the mean queue
        wait (sent to started, for tasks whose task-sent event was seen), oldest first."""
        now = time.time()
        first = int((now - window) // step) + 1
        rows = await self._run(
            self._query,
            "SELECT CAST(finished / ? AS INTEGER) AS slot, count(*),"
            " sum(state IN ('FAILURE', 'DEAD_LETTERED')),"
            " avg(CASE WHEN started >= sent THEN started - sent END)"
            " FROM tasks WHERE finished >= ? GROUP BY slot",
            (step, first * step),
        )
        found = {int(slot): (int(done), int(failed or 0), wait) for slot, done, failed, wait in rows}
        return [
            {
                "start": slot * step,
                "finished": found.get(slot, (0, 0, None))[0],
                "failed": found.get(slot, (0, 0, None))[1],
                "queue_wait": found.get(slot, (0, 0, None))[2],
            }
            for slot in range(first, int(now // step) + 1)
        ]

    async def states(self) -> dict[str, int]:
        """How many kept tasks are in each state."""
        rows = await self._run(self._query, "SELECT state, count(*) FROM tasks GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    async def distinct(self, column: str, *, limit: int = 200) -> list[str]:
        """The values of ``column`` (name, queue or worker) seen in the history, for filter menus.

        Kept in a table of their own as rows arrive (a DISTINCT over the tasks would scan them all).
        """
        if column not in ("name", "queue", "worker"):
            raise ValueError(f"no filter menu for {column!r}")
        rows = await self._run(
            self._query, "SELECT value FROM menus WHERE kind = ? ORDER BY value LIMIT ?", (column, limit)
        )
        return [str(row[0]) for row in rows]

    async def newest(self) -> float | None:
        """The timestamp of the newest event folded in (to skip replayed ones after a restart)."""
        rows = await self._run(self._query, "SELECT value FROM meta WHERE key = 'newest'")
        return float(rows[0][0]) if rows else None
