"""Disabling and enabling periodic entries: stored for every scheduler, honoured at the next refresh."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

import asyncq.beat_schedule as beat_schedule_module
import asyncq.scheduler as scheduler_module
from asyncq import App
from asyncq.scheduler import ENTRIES_KEY, BeatSchedule, Scheduler, tick_task_id, upcoming
from tests.unit.test_scheduler import FakeClock, sent_messages, step, utc


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(utc(2026, 3, 2, 12, 0, 0.5))
    monkeypatch.setattr(scheduler_module, "utcnow", fake)
    monkeypatch.setattr(beat_schedule_module, "utcnow", fake)
    return fake


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App("beat", broker="memory://")
    yield app
    await app.aclose()


async def test_a_disabled_entry_is_kept_but_not_in_force(app: App) -> None:
    app.conf.beat_schedule = {"static": {"task": "tasks.s", "schedule": 60}}
    await app.schedule.add("dynamic", "tasks.d", 30)
    assert await app.schedule.disable("static") is True
    assert await app.schedule.disable("dynamic") is True
    assert await app.schedule.disable("nothing") is False
    assert await app.schedule.entries() == {}
    every, disabled = await BeatSchedule(app).snapshot()  # what another process reads
    assert sorted(every) == ["dynamic", "static"]
    assert disabled == {"dynamic", "static"}
    stored = json.loads(await app.backend.get(ENTRIES_KEY) or b"")
    assert stored["disabled"] == ["dynamic", "static"]
    listed = {entry.name: ticks for entry, ticks in await upcoming(app, include_disabled=True)}
    assert listed == {"dynamic": [], "static": []}
    assert await upcoming(app) == []

    assert await app.schedule.enable("static") is True
    assert sorted(await app.schedule.entries()) == ["static"]
    # Removing a disabled entry forgets that it was disabled.
    assert await app.schedule.remove("dynamic") is True
    await app.schedule.add("dynamic", "tasks.d", 30)
    assert sorted(await app.schedule.entries()) == ["dynamic", "static"]


async def test_records_from_before_disabling_existed_are_read(app: App) -> None:
    record = {"version": 1, "entries": {"old": {"task": "t", "schedule": 10}}}
    await app.backend.set(ENTRIES_KEY, json.dumps(record).encode(), final=False, ttl=None)
    assert sorted(await app.schedule.entries()) == ["old"]
    assert await app.schedule.disable("old") is True
    assert await app.schedule.entries() == {}


async def test_a_scheduler_stops_and_resumes_with_the_entry(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60}}
    schedulers = [Scheduler(app), Scheduler(app)]
    await step(*schedulers)
    clock.advance(60)
    await step(*schedulers)
    [sent] = await sent_messages(app)
    assert sent.id == tick_task_id("tick", utc(2026, 3, 2, 12, 1))

    await app.schedule.disable("tick")
    for _ in range(3):
        clock.advance(60)
        await step(*schedulers)
    assert await sent_messages(app) == []
    assert all(scheduler._states == {} for scheduler in schedulers)

    await app.schedule.enable("tick")
    await step(*schedulers)  # enabled at 12:04:00.5: nothing due until 12:05
    assert await sent_messages(app) == []
    clock.advance(60)
    await step(*schedulers)
    [sent] = await sent_messages(app)  # once, by one of the two
    assert sent.id == tick_task_id("tick", utc(2026, 3, 2, 12, 5))


async def test_enabling_a_catch_up_entry_does_not_send_ticks_missed_while_disabled(
    app: App, clock: FakeClock
) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60, "catch_up": "once"}}
    scheduler = Scheduler(app)
    await step(scheduler)
    clock.advance(60)
    await step(scheduler)
    assert len(await sent_messages(app)) == 1
    await app.schedule.disable("tick")
    await step(scheduler)
    clock.advance(600)
    await app.schedule.enable("tick")
    await step(Scheduler(app), scheduler)  # a restarted scheduler too: no catch-up
    assert await sent_messages(app) == []
    clock.advance(60)
    await step(scheduler)
    [sent] = await sent_messages(app)
    assert sent.id == tick_task_id("tick", utc(2026, 3, 2, 12, 12))
