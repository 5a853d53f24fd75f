"""An app whose beat_schedule names a task that is not registered (a typo of ``add``)."""

from __future__ import annotations

from asyncq import App

app = App("bad-beat-app")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


app.conf.beat_schedule = {"sum": {"task": "tests.apps.bad_beat_app.ad", "schedule": 60, "args": (1, 2)}}
