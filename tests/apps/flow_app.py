"""Tasks with global limits for the flow-control acceptance tests; URLs come from ASYNCQ_* env.

Each run appends one line per event to a ledger file (O_APPEND: a short write is one atomic
line, whichever process writes it), read back to check what the limits allowed.
"""

from __future__ import annotations

import asyncio
import os
import time

from asyncq import App, current_task

app = App("flow-app")


def record(ledger: str, *fields: object) -> None:
    """Append ``fields`` and the time as one line."""
    line = " ".join(str(f) for f in (*fields, f"{time.time():.6f}", os.getpid())) + "\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(rate_limit="20/s")
async def tick(index: int, ledger: str) -> int:
    record(ledger, "start", index)
    return index


@app.task(concurrency_key="tenant", max_concurrency=2)
async def tenant_job(
    tenant: str, index: int, ledger: str, seconds: float = 0.2, first_for: float = 0.0
) -> int:
    """Runs ``seconds`` (``first_for`` instead on its first delivery, when given)."""
    task = current_task()
    assert task is not None
    first = task.request.delivery_info["delivery_count"] == 1
    record(ledger, "start", tenant, index)
    await asyncio.sleep(first_for if first and first_for else seconds)
    record(ledger, "end", tenant, index)
    return index
