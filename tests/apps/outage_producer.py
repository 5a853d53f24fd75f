"""A producer that enqueues in a loop and leaves ``asyncio.run`` without closing its app.

Run as ``python -m tests.apps.outage_producer``; URLs come from ASYNCQ_BROKER_URL and
ASYNCQ_RESULT_BACKEND. Prints ``sent N`` after each confirmed enqueue and, when one fails,
``failed: <error>``; then returns from main() with the app still open, as a script that
forgets (or cannot reach) its cleanup would, or, with ``--close``, closes the app first.
"""

from __future__ import annotations

import asyncio
import sys

from asyncq import App
from asyncq.exceptions import AsyncqError

app = App("outage-producer")


@app.task
async def noop() -> None:
    """Never run: the test only sends it."""


async def main() -> None:
    sent = 0
    try:
        while True:
            await noop.apply_async()
            sent += 1
            print(f"sent {sent}", flush=True)
            await asyncio.sleep(0.05)
    except AsyncqError as exc:
        print(f"failed: {exc}", flush=True)
    if "--close" in sys.argv:
        await app.aclose()
        print("app closed by the producer", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
