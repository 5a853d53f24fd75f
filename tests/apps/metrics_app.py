"""The app of the metrics and tracing tests: each outcome a task can have; URLs from the environment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncq import App, current_task
from asyncq.exceptions import Reject

app = App("obs", config={"task_default_retry_delay": 0.05})


@app.task
async def ok(x: int) -> int:
    return x


@app.task
async def gate(path: str) -> None:
    """Wait until ``path`` exists (holds the worker's only slot meanwhile)."""
    while not Path(path).exists():
        await asyncio.sleep(0.02)


@app.task
async def boom() -> None:
    raise ValueError("boom")


@app.task(max_retries=3)
async def flaky() -> int:
    """Fail the first attempt (a retry), succeed the second."""
    task = current_task()
    assert task is not None
    if task.request.retries == 0:
        raise task.retry(exc=RuntimeError("first attempt"))
    return task.request.retries


@app.task
async def refuse() -> None:
    raise Reject("not for us")
