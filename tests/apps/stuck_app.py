"""An app whose sync task blocks its thread for a long time (URLs from ASYNCQ_BROKER_URL)."""

from __future__ import annotations

import time
from pathlib import Path

from asyncq import App

app = App("stuck-app")


@app.task
def stuck(marker_dir: str, seconds: float = 600) -> None:
    """Leave a file when started, then block the worker's thread (threads cannot be cancelled)."""
    Path(marker_dir, "started").touch()
    time.sleep(seconds)
