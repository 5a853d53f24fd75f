"""The app of the dashboard tests: URLs and options come from ASYNCQ_* variables."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from asyncq import App
from asyncq.exceptions import Reject

app = App("dashboard-app")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def boom(message: str) -> None:
    """Fail with ``message`` (the dashboard shows the traceback)."""
    raise ValueError(message)


@app.task
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.task
async def fragile(ready_file: str) -> str:
    """Dead-letter itself until ``ready_file`` exists; then succeed (a requeue completes it)."""
    if not Path(ready_file).exists():
        raise Reject("input not ready")
    return "done"


@app.task(bind=True)
def record(self: Any) -> None:
    """Append this beat tick (entry, tick, task id) to ``$BEAT_RECORD_FILE``: a tick sent twice shows."""
    headers = self.request.headers
    line = f"{headers.get('beat_entry')}\t{headers.get('beat_tick')}\t{self.request.id}\n"
    fd = os.open(os.environ["BEAT_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
