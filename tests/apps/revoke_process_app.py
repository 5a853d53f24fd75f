"""Process-executor tasks for the revoke tests: the child process imports them by reference."""

from __future__ import annotations

import os
import time
from pathlib import Path

from asyncq import App

app = App("revoke-process", broker="memory://")


@app.task(executor="process")
def spin(pid_file: str) -> str:
    """Write the child's pid, then run far longer than any test waits."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)
    return "not stopped"


@app.task(executor="process")
def pid() -> int:
    return os.getpid()
