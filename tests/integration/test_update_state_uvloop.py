"""``update_state`` works under uvloop, the default loop of workers (its loops have no ``_thread_id``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from asyncq import App
from asyncq.states import State

uvloop = pytest.importorskip("uvloop")


def test_update_state_from_async_and_thread_tasks_under_uvloop(tmp_path: Path) -> None:
    app = App("uvloop-state", broker=f"sqlite:///{tmp_path / 'store.db'}")
    progress: dict[str, Any] = {}

    @app.task(bind=True, name="uv.async_progress")
    async def async_progress(self: Any) -> str:
        await self.update_state(state=State.STARTED, meta={"step": 1})
        progress["async"] = (await app.AsyncResult(self.request.id).info())["step"]
        return "async done"

    @app.task(bind=True, name="uv.thread_progress")
    def thread_progress(self: Any) -> str:
        self.update_state(state=State.STARTED, meta={"step": 2})
        return "thread done"

    async def main() -> list[str]:
        async with app, app.worker(concurrency=2):
            results = [await async_progress.enqueue(), await thread_progress.enqueue()]
            return [await r.get(timeout=60) for r in results]

    assert uvloop.run(main()) == ["async done", "thread done"]
    assert progress["async"] == 1
    asyncio.set_event_loop(None)
