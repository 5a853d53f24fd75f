"""The beat: periodic entries, and the loop that enqueues each of their ticks once.

This module owns

* :class:`Entry`, one periodic entry (task, schedule, arguments, send options, catch-up policy),
  built from ``conf.beat_schedule``, ``@app.periodic`` or ``await app.schedule.add(...)``;
* :class:`BeatSchedule` (``app.schedule``), the app's entries: static ones from code and
  configuration, and dynamic ones persisted in the result backend so every scheduler sees them;
* :class:`Scheduler`, the loop that sends each entry's ticks, embedded in a worker
  (``asyncq run --beat``) or alone (``asyncq beat``).

Exactly once across schedulers: a tick is an instant every scheduler computes alike from the
schedule (crontab wall times, intervals aligned to the Unix epoch). Before sending, a scheduler
claims the tick with ``backend.incr("asyncq:beat:<entry>:<tick>")``; only the one that reads 1
sends it, with a task id derived from the entry and the tick. The design and its limits are
written up in docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asyncq._utils import describe_error, utcnow
from asyncq.exceptions import AsyncqError, ConfigurationError
from asyncq.schedules import Schedule, interval, schedule_from

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
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

CatchUp = Literal["skip", "once"]
CATCH_UP_POLICIES: Final = get_args(CatchUp)

#: Options an entry passes on to ``apply_async``.
ENTRY_OPTIONS: Final = ("queue", "priority", "expires", "headers", "ignore_result", "serializer")
_ENTRY_KEYS: Final = frozenset({"task", "schedule", "args", "kwargs", "options", "catch_up"})

#: Keys in the result backend. Entry names may contain ':'; the tick is always the last part.
KEY_PREFIX: Final = "asyncq:beat:"
ENTRIES_KEY: Final = KEY_PREFIX + "entries"
_LAST_RUN_PREFIX: Final = KEY_PREFIX + "last:"
_CLAIM_PREFIX: Final = KEY_PREFIX + "claim:"
_LOCK_PREFIX: Final = KEY_PREFIX + "entries-lock:"

#: Headers every beat-sent message carries, so a task (or an operator) can tell which tick it is.
HEADER_ENTRY: Final = "beat_entry"
HEADER_TICK: Final = "beat_tick"

# A claim must outlive every scheduler that may still try the same tick: they try it only while
# it is the latest tick, so one period plus this much clock skew between schedulers.
CLAIM_TTL_MARGIN: Final = 3600.0
# A writer of the dynamic entries that holds the lock longer than this is presumed dead.
LOCK_LEASE: Final = 10.0
LOCK_POLL: Final = 0.05
# After a broker or backend error, wait this long before trying the same tick again.
RETRY_DELAY: Final = 1.0
# Ticks closer together than this are not distinguished by the catch-up search (crontabs fire on
# whole minutes; intervals are computed exactly and never reach it).
_SEARCH_RESOLUTION: Final = timedelta(milliseconds=1)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# uuid5 namespace of beat task ids: uuid5(NAMESPACE_URL, "asyncq:beat").
_TASK_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "asyncq:beat")


# -- tick arithmetic ------------------------------------------------------------------------------


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick of ``schedule`` strictly after ``after``, in UTC, the same in every process.

    Crontab ticks are wall-clock instants already. An :class:`~asyncq.schedules.interval` is
    aligned to the Unix epoch (ticks at whole multiples of the period since 1970-01-01 UTC)
    rather than counted from whenever a scheduler started, so that schedulers started at
    different times name the same ticks, which the claim key relies on.
    """
    if isinstance(schedule, interval):
        period = schedule.period // _US
        elapsed = (after.astimezone(UTC) - _EPOCH) // _US
        return _EPOCH + (elapsed // period + 1) * period * _US
    return schedule.next_after(after).astimezone(UTC)


def last_tick(schedule: Schedule, now: datetime, first: datetime) -> datetime:
    """The latest tick at or before ``now``, given that ``first`` is a tick at or before ``now``.

    Searches by bisection rather than stepping tick by tick, so catching up on a month of a
    one-minute crontab costs a few dozen ``next_after`` calls, not forty thousand.
    """
    if isinstance(schedule, interval):
        period = schedule.period // _US
        elapsed = (now.astimezone(UTC) - _EPOCH) // _US
        return max(first, _EPOCH + (elapsed // period) * period * _US)
    # Invariant: a tick lies in (low, now] (next_tick(low) <= now) and none lies in (high, now].
    low, high = first, now
    if next_tick(schedule, low) > now:
        return first
    while high - low > _SEARCH_RESOLUTION:
        middle = low + (high - low) / 2
        if next_tick(schedule, middle) <= now:
            low = middle
        else:
            high = middle
    tick = next_tick(schedule, low)
    while (following := next_tick(schedule, tick)) <= now:
        tick = following
    return tick


def tick_key(tick: datetime) -> str:
    """The tick as it appears in claim keys: epoch seconds, with microseconds only when needed."""
    micros = (tick.astimezone(UTC) - _EPOCH) // _US  # exact integers: no float rounding
    seconds, fraction = divmod(micros, 1_000_000)
    return str(seconds) if fraction == 0 else f"{seconds}.{fraction:06d}"


def tick_task_id(entry_name: str, tick: datetime) -> str:
    """The task id of one tick of one entry: the same in every scheduler (a uuid5).

    Two messages with the same id mean a tick was sent twice, which a broken claim would show.
    """
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{entry_name}@{tick_key(tick)}"))


# -- entries ------------------------------------------------------------------------------------


def _fail(entry: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"periodic entry {entry!r}: {message}")


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One periodic entry: send ``task(*args, **kwargs)`` at every tick of ``schedule``.

    Attributes:
        name: unique within the app; part of the claim keys and the tick task ids.
        task: the registered task name.
        schedule: when it fires (a crontab without a time zone uses the app's ``timezone``).
        args / kwargs: the task's arguments.
        options: ``apply_async`` options: queue, priority, expires, headers, ignore_result,
            serializer. ``expires`` defaults to the task's own, else to the next tick.
        catch_up: ticks missed while no scheduler ran: ``"skip"`` them (the default) or send
            the latest ``"once"`` when a scheduler starts.
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = "skip"

    @classmethod
    def build(
        cls,
        name: str,
        task: object,
        schedule: object,
        *,
        args: Sequence[Any] | None = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        catch_up: str = "skip",
    ) -> Entry:
        """Validate and normalise; raise ConfigurationError naming the entry and what is wrong."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a periodic entry name must be a non-empty string, got {name!r}")
        task_name = task if isinstance(task, str) else getattr(task, "name", None)
        if not isinstance(task_name, str) or not task_name:
            raise _fail(name, f"'task' must be a task or a task name, got {task!r}")
        try:
            parsed = schedule_from(schedule)
        except ConfigurationError as exc:
            raise _fail(name, str(exc)) from exc
        if args is None:
            args = ()
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise _fail(name, f"'args' must be a list or tuple, got {type(args).__name__}")
        if kwargs is not None and (
            not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)
        ):
            raise _fail(name, "'kwargs' must be a mapping with string keys")
        if catch_up not in CATCH_UP_POLICIES:
            raise _fail(name, f"catch_up={catch_up!r}; choose one of {', '.join(CATCH_UP_POLICIES)}")
        return cls(
            name=name,
            task=task_name,
            schedule=parsed,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            options=_check_options(name, options),
            catch_up=catch_up,  # type: ignore[arg-type]  # checked against CATCH_UP_POLICIES above
        )

    @classmethod
    def from_config(cls, name: str, spec: object) -> Entry:
        """Build from a ``beat_schedule`` value: ``{"task", "schedule", "args", "kwargs", ...}``."""
        if not isinstance(spec, Mapping):
            raise _fail(name, f"expected a dict with 'task' and 'schedule', got {type(spec).__name__}")
        unknown = sorted(set(spec) - _ENTRY_KEYS)
        if unknown:
            raise _fail(name, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_KEYS))}")
        for required in ("task", "schedule"):
            if required not in spec:
                raise _fail(name, f"missing {required!r}")
        return cls.build(
            name,
            spec["task"],
            spec["schedule"],
            args=spec.get("args", ()),
            kwargs=spec.get("kwargs"),
            options=spec.get("options"),
            catch_up=spec.get("catch_up", "skip"),
        )

    def to_config(self) -> dict[str, Any]:
        """A JSON-friendly ``beat_schedule`` value that :meth:`from_config` reads back.

        Raises:
            ConfigurationError: the schedule cannot be persisted (a custom Schedule without
                ``to_dict``) or the arguments are not JSON.
        """
        to_dict = getattr(self.schedule, "to_dict", None)
        if to_dict is None:
            raise _fail(self.name, f"schedule {self.schedule!r} has no to_dict(); it cannot be stored")
        config = {
            "task": self.task,
            "schedule": to_dict(),
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self.options,
            "catch_up": self.catch_up,
        }
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise _fail(self.name, f"arguments and options of a stored entry must be JSON: {exc}") from exc
        return config

    def fingerprint(self) -> str:
        """A string that changes whenever anything that affects sending changes."""
        schedule = getattr(self.schedule, "to_dict", None)
        described = {
            "task": self.task,
            "schedule": schedule() if schedule is not None else repr(self.schedule),
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": self.options,
            "catch_up": self.catch_up,
        }
        return json.dumps(described, sort_keys=True, default=repr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self.name == other.name and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]  # equal entries may hold unhashable arguments


def _check_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise _fail(name, f"'options' must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(ENTRY_OPTIONS))
    if unknown:
        raise _fail(name, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(ENTRY_OPTIONS)}")
    checked = dict(options)
    expires = checked.get("expires")
    if isinstance(expires, timedelta):
        checked["expires"] = expires.total_seconds()
    elif expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, int | float) or not expires > 0
    ):
        raise _fail(name, f"options.expires must be positive seconds or a timedelta, got {expires!r}")
    priority = checked.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9
    ):
        raise _fail(name, f"options.priority must be 0-9, got {priority!r}")
    headers = checked.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise _fail(name, "options.headers must be a dict")
    return checked


def _zone(app: App) -> ZoneInfo:
    name = app.conf.timezone
    try:
        return name if isinstance(name, ZoneInfo) else ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"setting timezone={name!r} is not a known time zone") from exc


def check_schedule(app: App) -> None:
    """Validate the ``timezone`` and the static entries, whose tasks must be registered in ``app``.

    Run by ``asyncq beat`` and ``asyncq run --beat`` before they start: an entry naming a task
    the app does not know (a typo, a module the app never imports) would send messages that
    no worker can run.
    """
    _zone(app)
    for name, entry in app.schedule.static_entries().items():
        if entry.task in app.tasks:
            continue
        own = sorted(task for task in app.tasks if not task.startswith("asyncq."))
        close = difflib.get_close_matches(entry.task, own, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"registered: {', '.join(own) or 'none'}"
        raise _fail(name, f"task {entry.task!r} is not registered in app {app.main!r}; {hint}")


# -- the app's entries -------------------------------------------------------------------------------


class BeatSchedule:
    """``app.schedule``: the app's periodic entries.

    Static entries come from ``conf.beat_schedule`` and ``@app.periodic`` (the configuration
    wins on a name clash) and are read afresh each time, so setting ``beat_schedule`` after
    creating the app works. Dynamic entries, from :meth:`add`, are stored in the result
    backend as one JSON record under ``asyncq:beat:entries``, so every scheduler sharing the
    backend sees them (on ``memory://`` they live in this process only). A dynamic entry
    replaces a static one of the same name; :meth:`remove` of a static entry stores a
    tombstone that disables it until it is added again.
    """

    def __init__(self, app: App) -> None:
        self._app = app
        self._periodic: dict[str, Entry] = {}
        # Schedulers of this process waiting to hear about changes: event -> its loop.
        self._listeners: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._parsed: tuple[bytes, int, dict[str, Entry | None]] | None = None

    def __repr__(self) -> str:
        return f"<BeatSchedule of {self._app!r}>"

    # -- static ---------------------------------------------------------------------------------

    def add_static(self, entry: Entry) -> None:
        """Add an entry defined in code (``@app.periodic``); it lives as long as the process."""
        existing = self._periodic.get(entry.name)
        if existing is not None and existing != entry:
            raise ConfigurationError(f"a different periodic entry is already named {entry.name!r}")
        self._periodic[entry.name] = entry

    def static_entries(self) -> dict[str, Entry]:
        """Entries from ``@app.periodic`` and ``conf.beat_schedule``, validated."""
        entries = dict(self._periodic)
        config = self._app.conf.beat_schedule
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"setting beat_schedule must be a dict, got {type(config).__name__}")
        for name, spec in config.items():
            entries[name] = Entry.from_config(name, spec)
        return entries

    # -- dynamic ----------------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        task: object,
        schedule: object,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        catch_up: CatchUp = "skip",
    ) -> Entry:
        """Add or replace the entry ``name``, for every scheduler sharing the result backend.

        ``task`` is a task or a task name; ``schedule`` a crontab, an interval, a timedelta or
        seconds. Arguments and options must be JSON, since the entry is stored.
        """
        entry = Entry.build(
            name, task, schedule, args=args, kwargs=kwargs, options=options, catch_up=catch_up
        )
        config = entry.to_config()

        def change(entries: dict[str, Any]) -> None:
            entries[name] = config

        await self._update(change)
        return entry

    async def remove(self, name: str) -> bool:
        """Remove the entry ``name`` everywhere; return False if there was no such entry."""
        existed = name in await self.entries()

        def change(entries: dict[str, Any]) -> None:
            if name in self.static_entries():
                entries[name] = None  # a tombstone: the static definition stays off
            else:
                entries.pop(name, None)

        if existed:
            await self._update(change)
        return existed

    async def entries(self) -> dict[str, Entry]:
        """Every entry in force: static ones, then dynamic ones over them; sorted by name."""
        merged = self.static_entries()
        _, dynamic = await self._read()
        for name, entry in dynamic.items():
            if entry is None:
                merged.pop(name, None)
            else:
                merged[name] = entry
        return dict(sorted(merged.items()))

    async def _read(self) -> tuple[int, dict[str, Entry | None]]:
        """The stored version and dynamic entries (None marks a removed static entry)."""
        await self._app.connect()
        raw = await self._app.backend.get(ENTRIES_KEY)
        if raw is None:
            return 0, {}
        if self._parsed is not None and self._parsed[0] == raw:
            return self._parsed[1], dict(self._parsed[2])
        version, stored = _decode_entries(raw)
        entries: dict[str, Entry | None] = {}
        for name, spec in stored.items():
            if spec is None:
                entries[name] = None
                continue
            try:
                entries[name] = Entry.from_config(name, spec)
            except ConfigurationError as exc:
                # One bad stored entry must not stop the others; it was valid when stored, so
                # this is a newer asyncq reading an older record or a hand edit.
                logger.error("ignoring stored periodic entry: %s", describe_error(exc))
        self._parsed = (raw, version, entries)
        return version, dict(entries)

    async def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Read-modify-write the stored entries under a lock, so concurrent writers lose nothing.

        The backend offers no compare-and-set, so the lock is a claim: the writer that takes
        ``incr(lock:<version>:<generation>) == 1`` writes version + 1; the others wait for the
        version to move and retry on top of it. A holder silent for LOCK_LEASE seconds is
        presumed dead and the waiters move on to the next generation's key.
        """
        await self._app.connect()
        backend = self._app.backend
        generation = 0
        while True:
            raw = await backend.get(ENTRIES_KEY)
            version, stored = (0, {}) if raw is None else _decode_entries(raw)
            claim = await backend.incr(f"{_LOCK_PREFIX}{version}:{generation}", ttl=LOCK_LEASE * 6)
            if claim == 1:
                # Our read may predate a write whose lock key has expired since: re-read.
                raw = await backend.get(ENTRIES_KEY)
                current, stored = (0, {}) if raw is None else _decode_entries(raw)
                if current != version:
                    generation = 0
                    continue
                change(stored)
                record = json.dumps({"version": version + 1, "entries": stored}, sort_keys=True)
                await backend.set(ENTRIES_KEY, record.encode(), final=False, ttl=None)
                self._notify()
                return
            deadline = time.monotonic() + LOCK_LEASE
            while time.monotonic() < deadline:
                await asyncio.sleep(LOCK_POLL)
                raw = await backend.get(ENTRIES_KEY)
                if raw is not None and _decode_entries(raw)[0] != version:
                    generation = 0
                    break
            else:
                logger.warning(
                    "the writer of periodic entries version %d went silent; taking over", version + 1
                )
                generation += 1

    def _listen(self, event: asyncio.Event) -> None:
        self._listeners[event] = asyncio.get_running_loop()

    def _unlisten(self, event: asyncio.Event) -> None:
        self._listeners.pop(event, None)

    def _notify(self) -> None:
        """Wake this process's schedulers so a change applies now, not at the next refresh."""
        for event, loop in list(self._listeners.items()):
            if loop.is_closed():
                self._listeners.pop(event, None)
            else:
                loop.call_soon_threadsafe(event.set)


def _decode_entries(raw: bytes) -> tuple[int, dict[str, Any]]:
    try:
        data = json.loads(raw)
        version, entries = data["version"], data["entries"]
        if not isinstance(version, int) or not isinstance(entries, dict):
            raise TypeError("bad field types")
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"the stored periodic entries ({ENTRIES_KEY}) are corrupt: {exc}") from exc
    return version, entries


# -- the loop -----------------------------------------------------------------------------------------


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
            entries = await self.app.schedule.entries()
            zone = _zone(self.app)
        except AsyncqError as exc:
            # Keep sending the entries we know; the store may be back at the next wake-up.
            logger.error(
                "cannot read the periodic entries (%s); keeping the %d known",
                describe_error(exc),
                len(self._states),
            )
            return
        for name in set(self._states) - set(entries):
            logger.info("periodic entry %r removed", name)
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
        raw = await self.app.backend.get(_LAST_RUN_PREFIX + name)
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
            await backend.set(_LAST_RUN_PREFIX + entry.name, record, final=False, ttl=None)
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
    app: App, count: int = 3, *, now: datetime | None = None
) -> list[tuple[Entry, list[datetime]]]:
    """Every entry in force with its next ``count`` ticks, in the entry's time zone (``beat --list``)."""
    zone = _zone(app)
    start = now or utcnow()
    listed: list[tuple[Entry, list[datetime]]] = []
    for entry in (await app.schedule.entries()).values():
        schedule = entry.schedule.with_tz(zone)
        shown_in = schedule.tz or zone
        ticks: list[datetime] = []
        after = start
        for _ in range(count):
            after = next_tick(schedule, after)
            ticks.append(after.astimezone(shown_in))
        listed.append((entry, ticks))
    return listed
