"""Periodic entries: what the beat sends and at which instants (the tick arithmetic).

:class:`Entry` is one periodic entry (task, schedule, arguments, send options, catch-up policy),
built from ``conf.beat_schedule``, ``@app.periodic`` or ``await app.schedule.add(...)``. A tick is
an instant every scheduler computes alike from the schedule (crontab wall times, intervals
aligned to the Unix epoch), and its task id is derived from the entry and the tick, so every
scheduler names a tick's message alike. See docs/scheduling.md.
"""

from __future__ import annotations

import difflib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asyncq.exceptions import ConfigurationError
from asyncq.schedules import Schedule, interval, schedule_from

if TYPE_CHECKING:
    from asyncq.app import App


__all__ = [
    "CATCH_UP_POLICIES",
    "KEY_PREFIX",
    "LAST_RUN_PREFIX",
    "CatchUp",
    "Entry",
    "check_schedule",
    "last_tick",
    "next_tick",
    "tick_key",
    "tick_task_id",
]

logger = logging.getLogger(__name__)

CatchUp = Literal["skip", "once"]
CATCH_UP_POLICIES: Final = get_args(CatchUp)

#: Options an entry passes on to ``apply_async``.
ENTRY_OPTIONS: Final = ("queue", "priority", "expires", "headers", "ignore_result", "serializer")
_ENTRY_KEYS: Final = frozenset({"task", "schedule", "args", "kwargs", "options", "catch_up"})

#: Keys in the result backend. Entry names may contain ':'; the tick is always the last part.
KEY_PREFIX: Final = "asyncq:beat:"
#: The last tick each entry sent (read by catch_up="once").
LAST_RUN_PREFIX: Final = KEY_PREFIX + "last:"

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
