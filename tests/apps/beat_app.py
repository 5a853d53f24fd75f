"""The app the beat acceptance tests start workers for; URLs come from ASYNCQ_BROKER_URL.

It carries the issue's ``beat_schedule`` example as written, plus ``every-second``, whose task
appends one line per run (tick, task id, pid) to ``$BEAT_RECORD_FILE``: a tick sent or run
twice shows up as two lines.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from asyncq import App, crontab

app = App("beat-app")


@app.task(name="tasks.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tasks.cleanup")
async def cleanup() -> None:
    return None


@app.task(bind=True)
def record(self: Any) -> None:
    """Append this run to the record file (O_APPEND: concurrent writers never interleave a line)."""
    line = f"{self.request.headers.get('beat_tick')}\t{self.request.id}\t{os.getpid()}\n"
    fd = os.open(os.environ["BEAT_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


app.conf.beat_schedule = {
    "add-every-monday-morning": {
        "task": "tasks.add",
        "schedule": crontab(hour=7, minute=30, day_of_week=1),
        "args": (16, 16),
    },
    "cleanup": {"task": "tasks.cleanup", "schedule": timedelta(minutes=5)},  # or a number of seconds
    # A generous expiry: this app tests exactly-once, not how a loaded machine drops stale ticks.
    "every-second": {"task": record.name, "schedule": 1, "options": {"expires": 60}},
}
app.conf.timezone = "Europe/Berlin"


@app.periodic(crontab(minute="*/15"), args=(1,))  # decorator form: defines a task and schedules it
async def poll(feed_id: int) -> None:
    return None
