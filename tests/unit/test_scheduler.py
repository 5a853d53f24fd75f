"""Unit tests for asyncq.scheduler: ticks, claims, catch-up, app.schedule and @app.periodic.

Everything runs on memory:// with a fake clock: the scheduler's steps (``_refresh``,
``_send_due``) are driven directly, so no test waits for real ticks except the few that check
the loop itself, with sub-second intervals and timeouts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from asyncq import App, crontab, interval
from asyncq import scheduler as scheduler_module
from asyncq.exceptions import BrokerError, ConfigurationError
from asyncq.message import Message, decode_message
from asyncq.scheduler import (
    ENTRIES_KEY,
    HEADER_ENTRY,
    HEADER_TICK,
    BeatSchedule,
    Entry,
    Scheduler,
    last_tick,
    next_tick,
    tick_task_id,
    upcoming,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC) + timedelta(seconds=second)


class FakeClock:
    """Stands in for the scheduler's ``utcnow``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(utc(2026, 3, 2, 12, 0, 0.5))
    monkeypatch.setattr(scheduler_module, "utcnow", fake)
    return fake


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App("beat", broker="memory://")
    yield app
    await app.aclose()


async def sent_messages(app: App, queue: str = "default") -> list[Message]:
    """Take every waiting message of ``queue`` (settling each), in order."""
    count = await app.broker.queue_length(queue)
    messages: list[Message] = []
    if count == 0:
        return messages
    deliveries = app.broker.consume([queue], prefetch=count)
    try:
        async with asyncio.timeout(5):
            async for delivery in deliveries:
                messages.append(decode_message(delivery.body, app.serializers))
                await delivery.ack()
                if len(messages) == count:
                    break
    finally:
        await deliveries.aclose()
    return messages


async def step(*schedulers: Scheduler) -> None:
    """One pass of each scheduler's loop body, without the sleep."""
    for scheduler in schedulers:
        await scheduler._refresh()
        await scheduler._send_due()


# -- tick arithmetic ---------------------------------------------------------------------------------


def test_interval_ticks_are_aligned_to_the_epoch_whoever_asks() -> None:
    every_5_min = interval(timedelta(minutes=5))
    assert next_tick(every_5_min, utc(2026, 3, 2, 12, 1, 17)) == utc(2026, 3, 2, 12, 5)
    assert next_tick(every_5_min, utc(2026, 3, 2, 12, 4, 59)) == utc(2026, 3, 2, 12, 5)
    assert next_tick(every_5_min, utc(2026, 3, 2, 12, 5)) == utc(2026, 3, 2, 12, 10)  # strictly after
    every_second = interval(1)
    assert next_tick(every_second, utc(2026, 3, 2, 12, 0, 0.25)) == utc(2026, 3, 2, 12, 0, 1)
    assert next_tick(interval(0.25), utc(2026, 3, 2, 12, 0, 0.3)) == utc(2026, 3, 2, 12, 0, 0.5)


def test_interval_ticks_ignore_the_zone_of_the_query() -> None:
    after = datetime(2026, 3, 29, 3, 1, tzinfo=BERLIN)  # just after the spring-forward gap
    tick = next_tick(interval(600, tz=BERLIN), after)
    assert tick.tzinfo is UTC
    assert tick == utc(2026, 3, 29, 1, 10)


def test_crontab_ticks_are_its_fire_times_in_utc() -> None:
    monday_morning = crontab(hour=7, minute=30, day_of_week=1, tz=BERLIN)
    tick = next_tick(monday_morning, utc(2026, 3, 1))
    assert tick == utc(2026, 3, 2, 6, 30)
    assert tick.tzinfo is UTC


def test_last_tick_of_an_interval() -> None:
    every_minute = interval(60)
    first = utc(2026, 3, 2, 12, 1)
    assert last_tick(every_minute, utc(2026, 3, 2, 12, 1, 30), first) == first
    assert last_tick(every_minute, utc(2026, 3, 2, 14, 7, 59), first) == utc(2026, 3, 2, 14, 7)


def test_last_tick_of_a_crontab_after_a_long_gap_is_found_quickly() -> None:
    every_minute = crontab()
    first = utc(2026, 1, 1, 0, 1)
    started = time.perf_counter()
    assert last_tick(every_minute, utc(2026, 2, 15, 9, 41, 12), first) == utc(2026, 2, 15, 9, 41)
    assert time.perf_counter() - started < 1.0  # bisection, not 65 000 steps


def test_last_tick_of_a_bursty_crontab() -> None:
    # Every minute of 09:00-09:59 in January only: from March, the latest tick is Jan 31st 09:59.
    january_mornings = crontab(minute="*", hour=9, month_of_year=1)
    first = utc(2026, 1, 1, 9, 0)
    assert last_tick(january_mornings, utc(2026, 3, 10), first) == utc(2026, 1, 31, 9, 59)


def test_last_tick_when_first_is_the_only_one() -> None:
    daily = crontab(hour=7, minute=30)
    first = utc(2026, 3, 2, 7, 30)
    assert last_tick(daily, utc(2026, 3, 2, 20), first) == first


def test_last_tick_across_a_dst_change() -> None:
    # 02:30 Berlin does not exist on 2026-03-29: it fires at 03:30 CEST (01:30 UTC).
    nightly = crontab(hour=2, minute=30, tz=BERLIN)
    first = next_tick(nightly, utc(2026, 3, 27))
    assert last_tick(nightly, utc(2026, 3, 29, 1, 45), first) == utc(2026, 3, 29, 1, 30)


def test_tick_task_ids_are_deterministic_and_distinct() -> None:
    tick = utc(2026, 3, 2, 12, 5)
    assert tick_task_id("cleanup", tick) == tick_task_id("cleanup", tick)
    assert tick_task_id("cleanup", tick) != tick_task_id("cleanup", tick + timedelta(minutes=5))
    assert tick_task_id("cleanup", tick) != tick_task_id("report", tick)
    assert tick_task_id("x", utc(2026, 1, 1, second=0.25)) != tick_task_id("x", utc(2026, 1, 1, second=0.5))


# -- entries -------------------------------------------------------------------------------------------


def test_the_beat_schedule_example_works_as_written(app: App) -> None:
    """The example of the issue, verbatim apart from the task module."""
    app.conf.beat_schedule = {
        "add-every-monday-morning": {
            "task": "tasks.add",
            "schedule": crontab(hour=7, minute=30, day_of_week=1),
            "args": (16, 16),
        },
        "cleanup": {"task": "tasks.cleanup", "schedule": timedelta(minutes=5)},  # or a number of seconds
        "cleanup-seconds": {"task": "tasks.cleanup", "schedule": 300},
    }
    app.conf.timezone = "Europe/Berlin"

    @app.periodic(crontab(minute="*/15"), args=(1,))  # decorator form: defines a task and schedules it
    async def poll(feed_id: int) -> None: ...

    entries = app.schedule.static_entries()
    assert sorted(entries) == ["add-every-monday-morning", "cleanup", "cleanup-seconds", poll.name]
    monday = entries["add-every-monday-morning"]
    assert (monday.task, monday.args, monday.catch_up) == ("tasks.add", (16, 16), "skip")
    assert entries["cleanup"].schedule == interval(300) == entries["cleanup-seconds"].schedule
    assert entries[poll.name].args == (1,)
    assert app.tasks[poll.name] is poll


async def test_the_example_ticks_in_the_apps_time_zone(app: App) -> None:
    app.conf.beat_schedule = {
        "add-every-monday-morning": {
            "task": "tasks.add",
            "schedule": crontab(hour=7, minute=30, day_of_week=1),
            "args": (16, 16),
        },
        "cleanup": {"task": "tasks.cleanup", "schedule": 300},
    }
    app.conf.timezone = "Europe/Berlin"
    listed = dict((entry.name, ticks) for entry, ticks in await upcoming(app, 3, now=utc(2026, 3, 20)))
    # Monday 07:30 Berlin: CET (+01:00) before 2026-03-29, CEST (+02:00) after.
    assert [t.isoformat() for t in listed["add-every-monday-morning"]] == [
        "2026-03-23T07:30:00+01:00",
        "2026-03-30T07:30:00+02:00",
        "2026-04-06T07:30:00+02:00",
    ]
    assert [t.astimezone(UTC) for t in listed["cleanup"]] == [
        utc(2026, 3, 20, 0, 5),
        utc(2026, 3, 20, 0, 10),
        utc(2026, 3, 20, 0, 15),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": 5}, "missing 'task'"),
        ({"task": "t"}, "missing 'schedule'"),
        ({"task": "t", "schedule": 5, "arg": [1]}, "unknown key(s) arg"),
        ({"task": "t", "schedule": crontab, "args": ()}, "cannot use"),
        ({"task": "t", "schedule": "*/5 * * * *"}, "cannot use"),
        ({"task": "t", "schedule": -1}, "must be positive"),
        ({"task": "t", "schedule": 5, "args": "abc"}, "'args' must be a list or tuple"),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "'kwargs' must be a mapping"),
        ({"task": "t", "schedule": 5, "catch_up": "all"}, "catch_up='all'"),
        ({"task": "t", "schedule": 5, "options": {"countdown": 3}}, "unknown option(s) countdown"),
        ({"task": "t", "schedule": 5, "options": {"priority": 12}}, "options.priority must be 0-9"),
        ({"task": "t", "schedule": 5, "options": {"expires": 0}}, "options.expires must be positive"),
        ({"task": 5, "schedule": 5}, "'task' must be a task or a task name"),
        ("t", "expected a dict"),
    ],
)
def test_bad_entries_fail_naming_the_entry(spec: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Entry.from_config("nightly", spec)
    assert "periodic entry 'nightly'" in str(info.value)
    assert message in str(info.value)


def test_bad_crontab_in_beat_schedule_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match="hour"):
        Entry.from_config("x", {"task": "t", "schedule": {"type": "crontab", "hour": "25"}})


def test_entries_round_trip_through_their_stored_form() -> None:
    entry = Entry.build(
        "report",
        "tasks.report",
        crontab(hour=7, minute=30, tz="Europe/Berlin"),
        args=[1, "a"],
        kwargs={"to": "ops"},
        options={"queue": "reports", "expires": timedelta(minutes=10), "priority": 5},
        catch_up="once",
    )
    config = json.loads(json.dumps(entry.to_config()))
    assert Entry.from_config("report", config) == entry
    assert config["options"]["expires"] == 600.0


def test_an_entry_with_unstorable_arguments_cannot_be_stored() -> None:
    entry = Entry.build("x", "t", 5, args=[object()])
    with pytest.raises(ConfigurationError, match="must be JSON"):
        entry.to_config()


def test_periodic_validates_before_registering(app: App) -> None:
    with pytest.raises(ConfigurationError, match="invalid crontab field minute"):

        @app.periodic(crontab(minute="61"))
        async def never() -> None: ...

    with pytest.raises(ConfigurationError, match="catch_up"):

        @app.periodic(60, catch_up="always")  # type: ignore[arg-type]
        async def also_never() -> None: ...

    assert not [name for name in app.tasks if not name.startswith("asyncq.")]


def test_periodic_takes_task_options_and_names_the_entry_after_the_task(app: App) -> None:
    @app.periodic(interval(60), kwargs={"full": True}, name="jobs.sync", queue="sync", catch_up="once")
    def sync(full: bool = False) -> bool:
        return full

    assert sync.name == "jobs.sync" and sync.options.queue == "sync"
    assert sync(full=True) is True  # still a plain task when called directly
    entry = app.schedule.static_entries()["jobs.sync"]
    assert (entry.task, entry.kwargs, entry.catch_up) == ("jobs.sync", {"full": True}, "once")


def test_config_entries_win_over_decorated_ones(app: App) -> None:
    @app.periodic(60, name="jobs.sync")
    async def sync() -> None: ...

    app.conf.beat_schedule = {"jobs.sync": {"task": "jobs.sync", "schedule": 120}}
    assert app.schedule.static_entries()["jobs.sync"].schedule == interval(120)


# -- app.schedule (dynamic entries) ------------------------------------------------------------------------


async def test_add_change_remove_dynamic_entries(app: App) -> None:
    @app.task
    async def ping() -> None: ...

    assert await app.schedule.entries() == {}
    added = await app.schedule.add("ping", ping, 30, kwargs={}, options={"queue": "q"})
    assert added.task == ping.name
    assert await app.schedule.entries() == {"ping": added}

    changed = await app.schedule.add("ping", ping.name, crontab(minute=0))
    assert (await app.schedule.entries())["ping"] == changed

    assert await app.schedule.remove("ping") is True
    assert await app.schedule.remove("ping") is False
    assert await app.schedule.entries() == {}


async def test_dynamic_entries_are_stored_for_other_schedulers(app: App) -> None:
    await app.schedule.add("a", "tasks.a", 10, args=[1])
    await app.schedule.add("b", "tasks.b", crontab(hour=3))
    stored = json.loads(await app.backend.get(ENTRIES_KEY) or b"")
    assert stored["version"] == 2
    assert sorted(stored["entries"]) == ["a", "b"]
    # A fresh view over the same store (what another process has) sees both.
    assert sorted(await BeatSchedule(app).entries()) == ["a", "b"]


async def test_removing_a_static_entry_leaves_a_tombstone_until_added_again(app: App) -> None:
    app.conf.beat_schedule = {"cleanup": {"task": "tasks.cleanup", "schedule": 300}}
    assert await app.schedule.remove("cleanup") is True
    assert await app.schedule.entries() == {}
    assert await BeatSchedule(app).entries() == {}
    await app.schedule.add("cleanup", "tasks.cleanup", 60)
    assert (await app.schedule.entries())["cleanup"].schedule == interval(60)


async def test_bad_dynamic_additions_fail_before_storing(app: App) -> None:
    with pytest.raises(ConfigurationError, match="must be JSON"):
        await app.schedule.add("x", "t", 5, args=[object()])
    with pytest.raises(ConfigurationError, match="periodic entry 'x'"):
        await app.schedule.add("x", "t", "often")
    assert await app.backend.get(ENTRIES_KEY) is None


async def test_concurrent_additions_lose_nothing(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = app.backend
    real_get, real_set = backend.get, backend.set

    async def slow_get(key: str) -> bytes | None:
        await asyncio.sleep(0.001)  # interleave the writers between read and write
        return await real_get(key)

    async def slow_set(key: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        await asyncio.sleep(0.001)
        await real_set(key, record, final=final, ttl=ttl)

    monkeypatch.setattr(backend, "get", slow_get)
    monkeypatch.setattr(backend, "set", slow_set)
    names = [f"entry-{i}" for i in range(8)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(app.schedule.add(name, "tasks.t", 60) for name in names))
    assert sorted(await app.schedule.entries()) == names
    assert json.loads(await real_get(ENTRIES_KEY) or b"")["version"] == len(names)


# -- claims and sending (fake clock) ------------------------------------------------------------------------


async def test_each_tick_is_sent_once_by_many_schedulers(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 1}}
    schedulers = [Scheduler(app) for _ in range(3)]
    await step(*schedulers)
    for _ in range(5):
        clock.advance(1)
        await step(*schedulers)
    messages = await sent_messages(app)
    ticks = [utc(2026, 3, 2, 12, 0, s) for s in range(1, 6)]
    assert [m.id for m in messages] == [tick_task_id("tick", t) for t in ticks]
    assert [m.headers[HEADER_TICK] for m in messages] == [t.isoformat() for t in ticks]
    assert {m.headers[HEADER_ENTRY] for m in messages} == {"tick"}
    assert sum(s.stats["sent"] for s in schedulers) == 5
    assert sum(s.stats["claimed_elsewhere"] for s in schedulers) == 10


async def test_nothing_is_sent_before_the_first_tick(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60}}
    scheduler = Scheduler(app, refresh_interval=300)
    await step(scheduler)
    clock.advance(30)
    await step(scheduler)
    assert await app.broker.queue_length("default") == 0
    assert scheduler._seconds_to_next() == pytest.approx(29.5)  # sleeps until the tick
    assert Scheduler(app, refresh_interval=2)._seconds_to_next() == 2  # or the next refresh


async def test_a_late_scheduler_sends_only_the_latest_tick(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 10}}
    scheduler = Scheduler(app)
    await step(scheduler)
    clock.advance(45)  # ticks at :10, :20, :30 and :40 are due
    await step(scheduler)
    [message] = await sent_messages(app)
    assert message.id == tick_task_id("tick", utc(2026, 3, 2, 12, 0, 40))
    assert scheduler.stats["late"] == 1


async def test_sent_ticks_expire_at_the_next_tick_by_default(app: App, clock: FakeClock) -> None:
    @app.task(expires=7)
    async def own_expiry() -> None: ...

    app.conf.beat_schedule = {
        "default": {"task": "tasks.t", "schedule": 10},
        "entry": {"task": "tasks.t", "schedule": 10, "options": {"expires": 3, "queue": "q", "priority": 4}},
        "task": {"task": own_expiry.name, "schedule": 10},
    }
    scheduler = Scheduler(app)
    await step(scheduler)
    clock.advance(10)
    sent_at = time.time()
    await step(scheduler)
    by_entry = {m.headers[HEADER_ENTRY]: m for m in await sent_messages(app) + await sent_messages(app, "q")}
    assert by_entry["default"].expires == utc(2026, 3, 2, 12, 0, 20).timestamp()
    assert by_entry["entry"].expires == pytest.approx(sent_at + 3, abs=1)
    assert (by_entry["entry"].queue, by_entry["entry"].priority) == ("q", 4)
    assert by_entry["task"].expires == pytest.approx(sent_at + 7, abs=1)


async def test_entry_headers_are_kept_beside_the_beat_headers(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"h": {"task": "t", "schedule": 1, "options": {"headers": {"team": "ops"}}}}
    scheduler = Scheduler(app)
    await step(scheduler)
    clock.advance(1)
    await step(scheduler)
    [message] = await sent_messages(app)
    assert message.headers["team"] == "ops"
    assert message.headers[HEADER_ENTRY] == "h"


async def test_a_failed_send_gives_the_tick_back(
    app: App, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 10}}
    flaky, steady = Scheduler(app), Scheduler(app)
    await step(flaky, steady)
    clock.advance(10)
    real_send = app.send_task

    async def broken_send(*args: Any, **kwargs: Any) -> Any:
        raise BrokerError("broker down")

    monkeypatch.setattr(app, "send_task", broken_send)
    await step(flaky)
    assert flaky.stats["sent"] == 0
    assert flaky._states["tick"].retry_at is not None
    monkeypatch.setattr(app, "send_task", real_send)
    await step(steady)  # the released claim can be taken by another scheduler
    await step(flaky)  # which the flaky one then sees as taken
    clock.advance(1)
    await step(flaky)
    [message] = await sent_messages(app)
    assert message.id == tick_task_id("tick", utc(2026, 3, 2, 12, 0, 10))
    assert steady.stats["sent"] == 1


async def test_catch_up_skip_ignores_ticks_missed_while_down(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60}}
    first = Scheduler(app)
    await step(first)
    clock.advance(60)
    await step(first)
    assert len(await sent_messages(app)) == 1
    clock.advance(3600)  # an hour with no scheduler
    await step(Scheduler(app))
    assert await app.broker.queue_length("default") == 0


async def test_catch_up_once_sends_the_latest_missed_tick_once(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60, "catch_up": "once"}}
    first = Scheduler(app)
    await step(first)
    clock.advance(60)
    await step(first)
    assert len(await sent_messages(app)) == 1
    clock.advance(3600 + 20)  # an hour with no scheduler: ticks 12:02..13:01 missed
    restarted = [Scheduler(app) for _ in range(3)]
    await step(*restarted)
    [message] = await sent_messages(app)
    assert message.id == tick_task_id("tick", utc(2026, 3, 2, 13, 1))
    clock.advance(40)
    await step(*restarted)  # back to normal: 13:02 is sent, once
    [message] = await sent_messages(app)
    assert message.id == tick_task_id("tick", utc(2026, 3, 2, 13, 2))


async def test_catch_up_once_without_a_previous_run_sends_nothing(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60, "catch_up": "once"}}
    await step(Scheduler(app))
    assert await app.broker.queue_length("default") == 0


async def test_catch_up_once_with_nothing_missed_sends_nothing(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60, "catch_up": "once"}}
    first = Scheduler(app)
    await step(first)
    clock.advance(60)
    await step(first)
    await sent_messages(app)
    clock.advance(30)
    await step(Scheduler(app))
    assert await app.broker.queue_length("default") == 0


async def test_changed_and_removed_entries_apply_at_the_next_step(app: App, clock: FakeClock) -> None:
    scheduler = Scheduler(app)
    await app.schedule.add("tick", "tasks.tick", 10)
    await step(scheduler)
    assert scheduler._states["tick"].due == utc(2026, 3, 2, 12, 0, 10)
    await app.schedule.add("tick", "tasks.tick", 60)
    await step(scheduler)
    assert scheduler._states["tick"].due == utc(2026, 3, 2, 12, 1)
    await app.schedule.remove("tick")
    await step(scheduler)
    assert scheduler._states == {}


async def test_a_changed_time_zone_restarts_crontab_entries(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"daily": {"task": "t", "schedule": crontab(hour=7, minute=0)}}
    scheduler = Scheduler(app)
    await step(scheduler)
    assert scheduler._states["daily"].due == utc(2026, 3, 3, 7)
    app.conf.timezone = "Europe/Berlin"
    await step(scheduler)
    assert scheduler._states["daily"].due == utc(2026, 3, 3, 6)


async def test_a_bad_time_zone_setting_fails_at_start(app: App) -> None:
    app.conf.timezone = "Mars/Olympus_Mons"
    with pytest.raises(ConfigurationError, match="timezone='Mars/Olympus_Mons'"):
        await Scheduler(app).serve()


async def test_a_bad_beat_schedule_fails_at_start(app: App) -> None:
    app.conf.beat_schedule = {"oops": {"task": "t", "schedule": crontab, "args": ()}}
    with pytest.raises(ConfigurationError, match="periodic entry 'oops'"):
        await Scheduler(app).serve()


def test_refresh_interval_must_be_positive(app: App) -> None:
    with pytest.raises(ConfigurationError, match="beat_refresh_interval"):
        Scheduler(app, refresh_interval=0)


# -- the loop (real time, sub-second ticks) ------------------------------------------------------------------

#: How long a stopped scheduler may take to return from serve() before the fixture cancels it.
STOP_WITHIN = 10.0


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Start schedulers as named tasks; at the end stop them and await every task.

    A scheduler that does not stop within the bound is cancelled (and still awaited), and the
    test fails: nothing a test started outlives it.
    """
    running: list[tuple[Scheduler, asyncio.Task[None]]] = []

    def start(scheduler: Scheduler) -> asyncio.Task[None]:
        task = asyncio.create_task(scheduler.serve(), name=f"test.beat.{len(running)}")
        running.append((scheduler, task))
        return task

    yield start
    for scheduler, _ in running:
        scheduler.stop()
    tasks = [task for _, task in running]
    _, late = await asyncio.wait(tasks, timeout=STOP_WITHIN) if tasks else (set(), set())
    for task in late:
        task.cancel()
    # Exceptions of tasks the test already awaited were seen by it; these are the rest.
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not late, (
        f"schedulers still serving {STOP_WITHIN}s after stop(): {sorted(t.get_name() for t in late)}"
    )


async def wait_for_queue(app: App, count: int, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while await app.broker.queue_length("default") < count:
            await asyncio.sleep(0.01)


async def test_serve_sends_ticks_and_stops_promptly(app: App, serve: Any) -> None:
    app.conf.beat_schedule = {"fast": {"task": "tasks.fast", "schedule": 0.1}}
    scheduler = Scheduler(app)
    task = serve(scheduler)
    await wait_for_queue(app, 3)
    scheduler.stop()
    async with asyncio.timeout(2):
        await task
    ids = [m.id for m in await sent_messages(app)]
    assert len(ids) == len(set(ids)) >= 3


async def test_serve_wakes_as_soon_as_an_entry_is_added(app: App, serve: Any) -> None:
    scheduler = Scheduler(app, refresh_interval=60)
    serve(scheduler)
    async with asyncio.timeout(5):
        await scheduler.ready.wait()
    await app.schedule.add("fast", "tasks.fast", 0.1)
    await wait_for_queue(app, 1, timeout=5)  # long before the 60 s refresh


async def test_stop_before_serve_starts_returns_at_once(app: App) -> None:
    scheduler = Scheduler(app)
    scheduler.stop()
    async with asyncio.timeout(2):
        await scheduler.serve()


async def test_worker_with_beat_runs_the_periodic_task(app: App) -> None:
    runs: list[str] = []
    done = asyncio.Event()

    @app.periodic(0.1, bind=True)
    async def tick(self: Any) -> None:
        runs.append(self.request.headers[HEADER_TICK])
        if len(runs) >= 3:
            done.set()

    async with app.worker(beat=True) as worker, asyncio.timeout(10):
        await done.wait()
    assert worker.scheduler is not None and worker.scheduler.stats["sent"] >= 3
    assert len(runs) == len(set(runs))


async def test_a_clock_set_back_does_not_stall_the_schedule(app: App, clock: FakeClock) -> None:
    app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 60}}
    scheduler = Scheduler(app)
    await step(scheduler)
    assert scheduler._states["tick"].due == utc(2026, 3, 2, 12, 1)
    clock.advance(-3600)
    await step(scheduler)
    assert scheduler._states["tick"].due == utc(2026, 3, 2, 11, 1)


def test_tick_keys_are_exact() -> None:
    assert scheduler_module.tick_key(utc(2026, 3, 2, 12)) == "1772452800"
    assert scheduler_module.tick_key(utc(2026, 3, 2, 12, second=0.000001)) == "1772452800.000001"
    assert scheduler_module.tick_key(datetime(2026, 3, 2, 13, tzinfo=BERLIN)) == "1772452800"
