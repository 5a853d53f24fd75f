"""The isolation gate: an exclusive run waits for ordinary tasks in flight and holds new ones."""

from __future__ import annotations

import asyncio

import pytest

from asyncq.worker.quarantine import IsolationGate, sandbox_ref
from tests.apps import poison_tasks

TIMEOUT = 15.0


@pytest.mark.asyncio
async def test_exclusive_run_waits_for_ordinary_tasks_and_holds_new_ones() -> None:
    gate = IsolationGate()
    order: list[str] = []
    gate.enter_open()  # an ordinary task in flight

    async def alone() -> None:
        async with gate.exclusive():
            order.append("alone")

    async def ordinary_later() -> None:
        await gate.enter()
        order.append("later")
        gate.leave()

    exclusive = asyncio.create_task(alone())
    await asyncio.sleep(0)
    assert not gate.is_open
    later = asyncio.create_task(ordinary_later())
    await asyncio.sleep(0)
    assert order == []  # the exclusive run waits for the task in flight; the new one waits too
    order.append("in flight done")
    gate.leave()
    await asyncio.wait_for(asyncio.gather(exclusive, later), TIMEOUT)
    assert order == ["in flight done", "alone", "later"]
    assert gate.is_open


def test_sandbox_ref_only_for_tasks_importable_by_reference() -> None:
    assert sandbox_ref(poison_tasks.work) == "tests.apps.poison_tasks:work"
    from asyncq import App

    app = App("local", broker="memory://")

    @app.task
    def local() -> None:
        pass

    assert sandbox_ref(local) is None
