"""The app the acceptance tests start workers for; URLs come from ASYNCQ_BROKER_URL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from asyncq import App, current_task

app = App("cli-app")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def slow(seconds: float, marker_dir: str) -> int:
    """Sleep, leaving a file per start (named by task id, delivery count and pid) to count runs."""
    task = current_task()
    assert task is not None
    request = task.request
    count = request.delivery_info["delivery_count"]
    Path(marker_dir, f"start-{request.id}-{count}-{os.getpid()}").touch()
    await asyncio.sleep(seconds)
    Path(marker_dir, f"done-{request.id}-{os.getpid()}").touch()
    return count


@app.task
async def mark(index: int, marker_dir: str, seconds: float = 0.05) -> int:
    """Leave one file per completed run (index, pid, unique suffix), so duplicates are countable."""
    await asyncio.sleep(seconds)
    Path(marker_dir, f"done-{index}-{os.getpid()}-{os.urandom(4).hex()}").touch()
    return index
