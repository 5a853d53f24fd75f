"""The beat: the loop that enqueues each tick of every periodic entry once.

:class:`Scheduler` sends each entry's ticks, embedded in a worker (``asyncq run --beat``) or
alone (``asyncq beat``). The entries and their tick arithmetic are in
:mod:`asyncq.beat_entries`; ``app.schedule`` (:class:`BeatSchedule`, static and stored
entries) is in :mod:`asyncq.beat_schedule`; both are re-exported here.

Exactly once across schedulers: a tick is an instant every scheduler computes alike from the
schedule (crontab wall times, intervals aligned to the Unix epoch). Before sending, a scheduler
claims the tick with ``backend.incr("asyncq:beat:<entry>:<tick>")``; only the one that reads 1
sends it, with a task id derived from the entry and the tick. The design and its limits are
written up in docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from asyncq._utils import describe_error, utcnow
from asyncq.beat_entries import (
    CATCH_UP_POLICIES,
    KEY_PREFIX,
    LAST_RUN_PREFIX,
    CatchUp,
    Entry,
    _zone,
    check_schedule,
    last_tick,
    next_tick,
    tick_key,
    tick_task_id,
)
from asyncq.beat_schedule import ENTRIES_KEY, BeatSchedule
from asyncq.exceptions import AsyncqError, ConfigurationError
from asyncq.schedules import Schedule

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "CATCH_UP_POLICIES",
    "ENTRIES_KEY",
    "HEADER_ENTRY",
    "HEADER_TICK",
    "BeatSchedule",
    "CatchUp",
    "Entry",
    "Scheduler",
    "check_schedule",
    "last_tick",
    "next_tick",
    "tick_task_id",
    "upcoming",
]

logger = logging.getLogger(__name__)

_CLAIM_PREFIX: Final = KEY_PREFIX + "claim:"

#: Headers every beat-sent message carries, so a task (or an operator) can tell which tick it is.
HEADER_ENTRY: Final = "beat_entry"
HEADER_TICK: Final = "beat_tick"

# A claim must outlive every scheduler that may still try the same tick: they try it only while
# it is the latest tick, so one period plus this much clock skew between schedulers.
CLAIM_TTL_MARGIN: Final = 3600.0
# After a broker or backend error, wait this long before trying the same tick again.
RETRY_DELAY: Final = 1.0


@dataclass(slots=True)
class _State:
    """What one scheduler knows of one entry."""

    entry: Entry
    schedule: Schedule  # with the app's time zone applied
    fingerprint: str
    due: datetime  # the next tick to send, UTC
    retry_at: datetime | None = None  # after an error: not before this


class Scheduler:
    """Sends every periodic entry's ticks; run as many as you like, each tick is sent once.

    Args:
        app: the app whose entries it runs.
        refresh_interval: seconds between re-reads of the stored entries while idle
            (``beat_refresh_interval``); changes made in this process apply at once.
    """

    def __init__(self, app: App, *, refresh_interval: float | None = None) -> None:
        self.app = app
        self.refresh_interval = float(
            app.conf.beat_refresh_interval if refresh_interval is None else refresh_interval
        )
        if not self.refresh_interval > 0:
            raise ConfigurationError(f"beat_refresh_interval must be positive, got {self.refresh_interval}")
        self.stats: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self._states: dict[str, _State] = {}
        self._stopping = False
        self._wake: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<Scheduler of {self.app!r} entries={sorted(self._states)}>"

    # -- lifecycle ----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Send ticks until :meth:`stop` is called.

        Raises:
            ConfigurationError: the static entries or the ``timezone`` setting are invalid.
        """
        schedule = self.app.schedule
        try:
            _zone(self.app)
            schedule.static_entries()  # validate at start: a typo in beat_schedule fails loudly
            if not self.app.backend.capabilities.counters:
                raise ConfigurationError(
                    f"the beat claims ticks with counters in the result backend, and "
                    f"{self.app.backend_url.split(':', 1)[0]}:// keeps none; set result_backend to "
                    "a store such as sqlite:// or redis://"
                )
        except ConfigurationError:
            self._stopping = False
            raise
        self._wake = wake = asyncio.Event()
        schedule._listen(wake)
        logger.info("beat started (refresh every %.1fs)", self.refresh_interval)
        try:
            await self.app.connect()
            while not self._stopping:
                wake.clear()
                await self._refresh()
                self.ready.set()
                await self._send_due()
                timeout = self._seconds_to_next()
                if timeout > 0 and not self._stopping:
                    # Sleep until the earliest tick; a change in this process or stop() wakes us.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await wake.wait()
        finally:
            schedule._unlisten(wake)
            # A stop requested before serve() began is honoured (it returns at once); after
            # returning, the scheduler may serve again.
            self._stopping = False
            self.ready.clear()
            logger.info("beat stopped: %s", dict(self.stats))

    def stop(self) -> None:
        """Ask :meth:`serve` to return (after the tick it may be sending)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def run(self, *, loop: str | None = None) -> None:
        """Run in a fresh event loop until SIGTERM/SIGINT (``asyncq beat``)."""
        from asyncq.runner import run_until_signalled

        def on_signal(signum: int) -> None:
            logger.warning("%s received: stopping the beat", signal.Signals(signum).name)
            self.stop()

        run_until_signalled(self.app, self.serve, on_signal, loop=loop or self.app.conf.worker_loop)

    # -- entries --------------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Bring the entry states in line with the entries in force."""
        try:
            every, disabled = await self.app.schedule.snapshot()
            zone = _zone(self.app)
        except AsyncqError as exc:
            # Keep sending the entries we know; the store may be back at the next wake-up.
            logger.error(
                "cannot read the periodic entries (%s); keeping the %d known",
                describe_error(exc),
                len(self._states),
            )
            return
        entries = {name: entry for name, entry in every.items() if name not in disabled}
        for name in set(self._states) - set(entries):
            logger.info("periodic entry %r %s", name, "disabled" if name in disabled else "removed")
            del self._states[name]
        for name, entry in entries.items():
            fingerprint = f"{entry.fingerprint()} {zone.key}"
            state = self._states.get(name)
            if state is not None and state.fingerprint == fingerprint:
                continue
            try:
                self._states[name] = await self._start_entry(entry, zone, fingerprint)
            except AsyncqError as exc:
                logger.error("cannot start periodic entry %r: %s", name, describe_error(exc))

    async def _start_entry(self, entry: Entry, zone: ZoneInfo, fingerprint: str) -> _State:
        """The state of a new or changed entry, with its catch-up policy applied."""
        schedule = entry.schedule.with_tz(zone)
        now = utcnow()
        due = next_tick(schedule, now)
        if entry.catch_up == "once":
            last = await self._last_run(entry.name)
            if last is not None:
                first_missed = next_tick(schedule, last)
                if first_missed <= now:
                    due = last_tick(schedule, now, first_missed)
                    logger.info("periodic entry %r missed ticks since %s; sending one", entry.name, last)
        logger.info("periodic entry %r: %s, next at %s", entry.name, entry.task, due.isoformat())
        return _State(entry=entry, schedule=schedule, fingerprint=fingerprint, due=due)

    async def _last_run(self, name: str) -> datetime | None:
        raw = await self.app.backend.get(LAST_RUN_PREFIX + name)
        if raw is None:
            return None
        try:
            return datetime.fromtimestamp(float(json.loads(raw)["tick"]), UTC)
        except (ValueError, TypeError, KeyError):
            logger.warning("ignoring a corrupt last-run record of periodic entry %r", name)
            return None

    def _seconds_to_next(self) -> float:
        now = utcnow()
        waits = [self.refresh_interval]
        for state in self._states.values():
            when = max(state.due, state.retry_at or state.due)
            waits.append((when - now).total_seconds())
        return max(0.0, min(waits))

    # -- sending --------------------------------------------------------------------------------------

    async def _send_due(self) -> None:
        for state in list(self._states.values()):
            now = utcnow()
            if state.due > now:
                # The wall clock may have been set back since the due tick was computed; don't
                # wait out the difference. Ticks it re-crosses are claimed already.
                state.due = min(state.due, next_tick(state.schedule, now))
                continue
            if state.retry_at is not None and state.retry_at > now:
                continue
            tick = last_tick(state.schedule, now, state.due)
            if tick != state.due:
                # A late scheduler (blocked loop, suspended machine) sends only the latest tick:
                # the earlier ones would have expired at their successor anyway.
                self.stats["late"] += 1
                logger.warning(
                    "beat fell behind on %r: skipping ticks %s..%s",
                    state.entry.name,
                    state.due.isoformat(),
                    tick.isoformat(),
                )
            if await self._send_tick(state, tick):
                state.due = next_tick(state.schedule, tick)
                state.retry_at = None
            else:
                state.retry_at = now + timedelta(seconds=RETRY_DELAY)
            if self._stopping:
                return

    async def _send_tick(self, state: _State, tick: datetime) -> bool:
        """Claim ``tick`` and send it if this scheduler won; False means "try again later"."""
        entry = state.entry
        backend = self.app.backend
        following = next_tick(state.schedule, tick)
        claim_key = f"{_CLAIM_PREFIX}{entry.name}:{tick_key(tick)}"
        ttl = (following - tick).total_seconds() + CLAIM_TTL_MARGIN
        try:
            claim = await backend.incr(claim_key, ttl=ttl)
        except AsyncqError as exc:
            logger.error(
                "cannot claim tick %s of %r (%s); retrying", tick.isoformat(), entry.name, describe_error(exc)
            )
            return False
        if claim != 1:
            self.stats["claimed_elsewhere"] += 1
            logger.debug("tick %s of %r was claimed by another scheduler", tick.isoformat(), entry.name)
            return True
        task_id = tick_task_id(entry.name, tick)
        try:
            await self.app.send_task(
                entry.task, entry.args, entry.kwargs, **self._send_options(entry, tick, following, task_id)
            )
        except AsyncqError as exc:
            logger.error(
                "cannot send tick %s of %r (%s); retrying", tick.isoformat(), entry.name, describe_error(exc)
            )
            # Give the tick back so this or another scheduler can send it once the broker is
            # back. If the broker stored it after all (a timeout), the retry sends a second
            # message with the same task id: visible, and a task can drop it by id.
            try:
                await backend.incr(claim_key, -1, ttl=ttl)
            except AsyncqError as release_exc:
                logger.error(
                    "cannot release tick %s of %r (%s): it is lost", tick.isoformat(), entry.name, release_exc
                )
                return True
            return False
        self.stats["sent"] += 1
        logger.info("sent %s[%s] for tick %s of %r", entry.task, task_id, tick.isoformat(), entry.name)
        record = json.dumps({"tick": tick.timestamp(), "task_id": task_id}).encode()
        try:
            await backend.set(LAST_RUN_PREFIX + entry.name, record, final=False, ttl=None)
        except AsyncqError as exc:
            # Only catch_up="once" reads it, to decide whether a tick was missed.
            logger.warning("cannot record the last run of %r: %s", entry.name, describe_error(exc))
        return True

    def _send_options(
        self, entry: Entry, tick: datetime, following: datetime, task_id: str
    ) -> dict[str, Any]:
        options = dict(entry.options)
        headers = dict(options.pop("headers", None) or {})
        headers[HEADER_ENTRY] = entry.name
        headers[HEADER_TICK] = tick.isoformat()
        options["headers"] = headers
        options["task_id"] = task_id
        if "expires" not in options:
            task = self.app.tasks.get(entry.task)
            own = task.options.expires if task is not None else None
            # Default: a tick not started by the next one is stale, so a backlog cannot pile up.
            options["expires"] = own if own is not None else following
        return options


# -- previews ------------------------------------------------------------------------------------------


async def upcoming(
    app: App, count: int = 3, *, now: datetime | None = None, include_disabled: bool = False
) -> list[tuple[Entry, list[datetime]]]:
    """Every entry in force with its next ``count`` ticks, in the entry's time zone (``beat --list``).

    With ``include_disabled``, disabled entries are listed too, with no ticks.
    """
    zone = _zone(app)
    start = now or utcnow()
    listed: list[tuple[Entry, list[datetime]]] = []
    every, disabled = await app.schedule.snapshot()
    for entry in every.values():
        if entry.name in disabled:
            if include_disabled:
                listed.append((entry, []))
            continue
        schedule = entry.schedule.with_tz(zone)
        shown_in = schedule.tz or zone
        ticks: list[datetime] = []
        after = start
        for _ in range(count):
            after = next_tick(schedule, after)
            ticks.append(after.astimezone(shown_in))
        listed.append((entry, ticks))
    return listed
