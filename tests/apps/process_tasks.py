"""Tasks for the process executor: the child process imports them by reference."""

from __future__ import annotations

import os
import time
from typing import Any

from asyncq import App, current_task
from asyncq.exceptions import SoftTimeLimitExceeded

app = App("process-tasks", broker="memory://")


@app.task(executor="process")
def crunch(n: int) -> int:
    return sum(i * i for i in range(n))


@app.task(executor="process")
def whoami() -> dict[str, object]:
    task = current_task()
    assert task is not None
    return {"pid": os.getpid(), "id": task.request.id, "task": task.request.task}


@app.task(executor="process", soft_time_limit=0.3, time_limit=5)
def soft_limited() -> str:
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(executor="process", time_limit=0.5)
def hard_limited() -> str:
    while True:
        time.sleep(0.05)


@app.task(executor="process", bind=True)
def report_progress(self: Any, release_file: str) -> str:
    """Report progress, then wait (up to 30 s) for the test to create ``release_file``."""
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    deadline = time.monotonic() + 30
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    self.update_state(state="PROGRESS", meta={"done": 2, "total": 2})
    return "finished"
