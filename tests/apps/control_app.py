"""The app of the control-plane acceptance tests; URLs come from ASYNCQ_BROKER_URL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from asyncq import App, current_task

app = App("control-app")


def _mark(marker_dir: str, kind: str) -> int:
    task = current_task()
    assert task is not None
    request = task.request
    count = int(request.delivery_info["delivery_count"])
    Path(marker_dir, f"{kind}-{request.id}-{count}-{os.getpid()}").touch()
    return count


@app.task
async def sticky(marker_dir: str) -> int:
    """Hang on its first delivery (until its worker dies); finish at once on a later one."""
    count = _mark(marker_dir, "start")
    if count == 1:
        await asyncio.sleep(3600)
    _mark(marker_dir, "done")
    return count


@app.task
async def nap(seconds: float, marker_dir: str) -> int:
    """Sleep ``seconds``, leaving a marker file at the start and at the end of each run."""
    count = _mark(marker_dir, "start")
    await asyncio.sleep(seconds)
    _mark(marker_dir, "done")
    return count
