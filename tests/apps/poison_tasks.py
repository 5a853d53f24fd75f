"""Tasks for the poison-message tests: a sandbox child imports them by reference.

The app takes its URLs from ASYNCQ_BROKER_URL / ASYNCQ_RESULT_BACKEND, so the acceptance
tests run ``asyncq run tests.apps.poison_tasks:app`` over any broker.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from asyncq import App

app = App("poison-tasks")


def _mark(marker_dir: str | None, index: int) -> None:
    if marker_dir is not None:  # one file per completed run, so duplicates are countable
        Path(marker_dir, f"done-{index}-{os.getpid()}-{os.urandom(4).hex()}").touch()


@app.task(name="poison.work")
async def work(index: int, marker_dir: str | None = None, poison: bool = False) -> dict[str, int]:
    """Kill the whole process if ``poison``; else leave a marker and return (index, pid)."""
    if poison:
        os._exit(1)
    await asyncio.sleep(0.02)
    _mark(marker_dir, index)
    return {"index": index, "pid": os.getpid()}


@app.task(name="poison.sync_work")
def sync_work(index: int, marker_dir: str | None = None, poison: bool = False) -> dict[str, int]:
    """The thread-executor twin of :func:`work`."""
    if poison:
        os._exit(1)
    time.sleep(0.02)
    _mark(marker_dir, index)
    return {"index": index, "pid": os.getpid()}


@app.task(name="poison.hold")
async def hold() -> int:
    """Take 30 s on its first delivery (to be cut short), none after; return the pid."""
    from asyncq import current_task

    task = current_task()
    assert task is not None
    if task.request.delivery_info["delivery_count"] == 1:
        await asyncio.sleep(30)
    return os.getpid()
