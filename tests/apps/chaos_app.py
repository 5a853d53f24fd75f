"""The chaos suite's tasks: each healthy run leaves one row in a SQLite ledger; poison exits.

The ledger is written before the task returns, hence before its message is acknowledged:
a run that is recorded may run again (at-least-once), and the ledger counts those duplicates.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

from asyncq import App, current_task

app = App("chaos-app")

#: One connection per worker process and ledger file (the tasks run on one event loop).
_ledgers: dict[str, sqlite3.Connection] = {}

LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (idx INTEGER NOT NULL, pid INTEGER NOT NULL,"
    " delivery_count INTEGER NOT NULL, at REAL NOT NULL)"
)


def open_ledger(path: str) -> sqlite3.Connection:
    """Open (and create) a ledger; WAL, so that readers never block the workers' writes."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(LEDGER_SCHEMA)
    return db


@app.task
async def record(index: int, ledger: str, sleep_ms: int) -> int:
    """Sleep ``sleep_ms``, then add one row for this run to the ledger."""
    await asyncio.sleep(sleep_ms / 1000)
    task = current_task()
    count = task.request.delivery_info["delivery_count"] if task is not None else 0
    db = _ledgers.get(ledger)
    if db is None:
        db = _ledgers[ledger] = open_ledger(ledger)
    # A committed row survives the SIGKILL of this process (WAL commits are durable to it).
    db.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (index, os.getpid(), count, time.time()))
    return index


@app.task
async def poison(index: int) -> int:
    """Kill the worker process running it, every time it is delivered."""
    os._exit(1)
