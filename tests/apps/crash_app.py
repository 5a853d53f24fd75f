"""An app whose task kills its worker process: a poison message (URLs from ASYNCQ_BROKER_URL)."""

from __future__ import annotations

import os
from pathlib import Path

from asyncq import App, current_task

app = App("crash-app")


@app.task
async def crash(marker_dir: str) -> None:
    """Leave one file per run (named by delivery count and pid), then end the process at once."""
    task = current_task()
    assert task is not None
    count = task.request.delivery_info["delivery_count"]
    Path(marker_dir, f"run-{count}-{os.getpid()}-{os.urandom(4).hex()}").touch()
    os._exit(1)
