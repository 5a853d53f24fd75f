"""The app the first-hour CLI tests run: a task that fails, one that retries later, one that logs."""

from __future__ import annotations

import logging
from typing import Any

from asyncq import App

app = App("onboarding-app")
logger = logging.getLogger(__name__)


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def fail(message: str) -> None:
    raise ValueError(f"{message}\nsecond line of the message")


@app.task(bind=True, max_retries=1)
async def retry_later(self: Any) -> None:
    raise self.retry(exc=RuntimeError("not yet"), countdown=300)


@app.task
async def chatty(word: str) -> str:
    logger.warning("saying %s", word)
    return word
