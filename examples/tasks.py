"""Tasks of the demo: no broker URL is configured, so the embedded SQLite store is used."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from asyncq import App

app = App("demo")


@app.task
async def add(x: int, y: int) -> int:
    """An async task: runs on the worker's event loop."""
    return x + y


@app.task
def word_count(text: str) -> int:
    """A plain function: runs in the worker's thread pool."""
    return len(text.split())


@app.task(executor="process")
def digest(data: str, rounds: int) -> str:
    """CPU-bound work: runs in the worker's process pool."""
    value = data.encode()
    for _ in range(rounds):
        value = hashlib.sha256(value).digest()
    return value.hex()[:16]


@app.task
async def nap(seconds: float) -> float:
    """Waits without holding a thread: thousands of these share one worker."""
    await asyncio.sleep(seconds)
    return seconds


attempts: dict[str, int] = {}


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
async def flaky(self: Any, name: str) -> str:
    """Fails twice, then succeeds: retries keep the same task id."""
    if self.request.retries < 2:
        raise self.retry(exc=RuntimeError(f"{name}: not yet"))
    return f"{name} succeeded after {self.request.retries} retries"
