"""An app for the sync API's tests: Celery's first example's ``add``, importable by a script.

The broker URL comes from ``ASYNCQ_TEST_SYNC_BROKER``, so a script run in a subprocess and the
test's worker share one queue; :func:`build` makes the same app on any URL.
"""

from __future__ import annotations

import os
import time

from asyncq import App


class Boom(Exception):
    """What ``boom`` raises."""


def build(broker: str) -> App:
    """The test app on ``broker``: tasks ``add``, ``tsum``, ``boom`` and ``slow``."""
    app = App("sync_app", broker=broker)

    @app.task(name="sync_app.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sync_app.tsum")
    async def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="sync_app.boom")
    def boom(message: str) -> None:
        raise Boom(message)

    @app.task(name="sync_app.slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


app = build(os.environ.get("ASYNCQ_TEST_SYNC_BROKER", "memory://"))
add = app.tasks["sync_app.add"]
