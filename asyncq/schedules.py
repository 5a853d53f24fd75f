"""Periodic schedules: when a recurring job fires next.

This module owns the arithmetic of periodic schedules and nothing else: no clocks, no I/O,
no knowledge of tasks or brokers. It provides

* :class:`Schedule`, the protocol the scheduler relies on (``next_after``, ``tz``, ``with_tz``);
* :class:`crontab`, Celery-compatible cron expressions evaluated in a time zone;
* :class:`interval`, a fixed period of elapsed time;
* :func:`schedule_from`, which turns user-facing values (a schedule, a ``timedelta``, a number of
  seconds, or a dict produced by ``to_dict()``) into a :class:`Schedule`.

Crontab semantics, in brief (details in :class:`crontab`):

* Field syntax and meaning follow Celery: ``*``, numbers, lists, ranges (which may wrap around,
  e.g. ``fri-mon``), steps, and day/month names.
* Day matching follows **Celery, not Vixie cron**: a day must match ``day_of_month`` AND
  ``day_of_week`` AND ``month_of_year``, even when both day fields are restricted.
* Fire times are wall-clock times in the schedule's zone (UTC when ``tz`` is None). Every
  matching wall-clock time fires exactly once, resolved with ``fold=0``: a time skipped by a
  spring-forward gap fires at the instant it maps to just after the gap (02:30 becomes 03:30
  when clocks jump 02:00->03:00), a time repeated by a fall-back fires at its first occurrence
  only, and two wall times that map to the same instant fire once.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol, Self, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asyncq._cron import (
    DOM_SPEC,
    DOW_SPEC,
    FIELD_NAMES,
    HOUR_SPEC,
    MAX_MONTH_DAYS,
    MINUTE_SPEC,
    MONTH_SPEC,
    FieldValue,
    cron_line,
    parse_field,
)
from asyncq.exceptions import ConfigurationError

__all__ = ["Schedule", "crontab", "interval", "schedule_from"]

_MINUTE = timedelta(minutes=1)
_ZERO = timedelta(0)

# The Gregorian calendar, weekdays included, repeats every 400 years (146097 days, a whole number
# of weeks). Construction rejects crontabs whose (month, day) pairs can never exist, so every
# accepted crontab fires within one cycle; the horizon only guards against bugs and year 9999.
_HORIZON_YEARS = 400


@runtime_checkable
class Schedule(Protocol):
    """What the scheduler needs from a periodic schedule.

    ``tz`` is the zone the schedule's wall-clock rules are written in (None when unset, which
    :class:`crontab` reads as UTC). ``with_tz`` lets the app apply its configured time zone to
    schedules that did not choose one.
    """

    @property
    def tz(self) -> ZoneInfo | None:
        """The schedule's time zone, or None if it has none of its own."""
        ...

    def next_after(self, after: datetime) -> datetime:
        """Return the first fire time strictly after the aware datetime ``after``."""
        ...

    def with_tz(self, tz: ZoneInfo | str | None) -> Schedule:
        """Return a copy using ``tz`` if this schedule has no time zone yet, else ``self``."""
        ...


def _coerce_tz(value: object, owner: str) -> ZoneInfo | None:
    if value is None or isinstance(value, ZoneInfo):
        return value
    if isinstance(value, str):
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ConfigurationError(f"invalid {owner} tz={value!r}: unknown time zone") from exc
    raise ConfigurationError(f"invalid {owner} tz={value!r}: expected a zoneinfo.ZoneInfo or a zone name")


def _tz_key(tz: ZoneInfo | None) -> str | None:
    if tz is None:
        return None
    if tz.key is None:
        # ZoneInfo.from_file() zones have no name to persist or compare by.
        raise ConfigurationError("time zones loaded without a key (ZoneInfo.from_file) are not supported")
    return tz.key


def _require_aware(after: datetime) -> None:
    if not isinstance(after, datetime) or after.tzinfo is None or after.utcoffset() is None:
        raise ValueError(f"next_after needs an aware datetime, got {after!r}")


def _check_keys(data: Mapping[str, Any], kind: str, allowed: set[str]) -> None:
    kind_given = data.get("type", kind)
    if kind_given != kind:
        raise ConfigurationError(f"expected a {kind!r} schedule dict, got type={kind_given!r}")
    unknown = sorted(set(data) - allowed - {"type"})
    if unknown:
        raise ConfigurationError(f"unknown keys in {kind} schedule dict: {', '.join(unknown)}")


@dataclass(frozen=True, init=False, repr=False)
class crontab:  # noqa: N801 - Celery's name, kept for familiarity
    """A Celery-style cron schedule evaluated in a time zone.

    Every field accepts an int, a string expression, or an iterable of ints. Expressions are
    comma-separated lists of ``*``, ``n``, ``a-b``, ``*/s``, ``a-b/s`` and ``a/s`` (``a`` to the
    field's maximum in steps of ``s``). Ranges whose end is below their start wrap around, as in
    Celery (``hour="22-2"``, ``day_of_week="fri-mon"``). Field ranges: minute 0-59, hour 0-23,
    day_of_week 0-6 with Sunday as 0 (7 is accepted as Sunday too, and the names ``sun``..``sat``
    or ``sunday``..``saturday``), day_of_month 1-31, month_of_year 1-12 (or ``jan``..``dec``).
    Names are case-insensitive.

    Day rule: as in Celery, a day fires only if it matches ``month_of_year`` AND
    ``day_of_month`` AND ``day_of_week``. This differs from Vixie cron, which fires when
    *either* day field matches if both are restricted; ``day_of_month=13, day_of_week="fri"``
    therefore means "Friday the 13th" here.

    Time zones and DST: fire times are wall-clock times in ``tz`` (UTC when None), and every
    matching wall-clock time fires exactly once, resolved with ``fold=0``:

    * a wall time skipped by a spring-forward gap fires at the instant it denotes with the
      pre-gap offset, i.e. shifted past the gap (in Europe/Berlin on 2026-03-29, 02:30 fires
      at 03:30 CEST). If that instant is also a matching wall time (``minute=30, hour="*"``),
      it still fires only once;
    * a wall time repeated by a fall-back fires at its first occurrence only, so an hourly
      schedule skips the repeated hour's second pass.

    Bad expressions, and crontabs that can never fire (``day_of_month=31, month_of_year=2``),
    raise :class:`~asyncq.exceptions.ConfigurationError` at construction. Equality compares the
    times a crontab fires, not how they were spelt: ``crontab(day_of_week="mon-fri")`` equals
    ``crontab(day_of_week=[1, 2, 3, 4, 5])``.
    """

    minute: str = field(compare=False)
    hour: str = field(compare=False)
    day_of_week: str = field(compare=False)
    day_of_month: str = field(compare=False)
    month_of_year: str = field(compare=False)
    tz: ZoneInfo | None = field(compare=False)
    _minutes: tuple[int, ...]
    _hours: tuple[int, ...]
    _days_of_week: frozenset[int]
    _days_of_month: tuple[int, ...]
    _months: tuple[int, ...]
    _tz_key: str | None

    def __init__(
        self,
        minute: FieldValue = "*",
        hour: FieldValue = "*",
        day_of_week: FieldValue = "*",
        day_of_month: FieldValue = "*",
        month_of_year: FieldValue = "*",
        *,
        tz: ZoneInfo | str | None = None,
    ) -> None:
        """Parse and validate every field; raise ConfigurationError naming the bad one.

        A whole five-field cron line as the only field (``crontab("*/15 * * * *")``) is read
        as :meth:`from_string` reads it.
        """
        line = cron_line(minute)
        if line is not None:
            if (hour, day_of_week, day_of_month, month_of_year) != ("*", "*", "*", "*"):
                raise ConfigurationError(
                    f"crontab({minute!r}, ...) mixes a cron line with other fields; "
                    "use crontab.from_string(line) alone, or keyword fields alone"
                )
            minute, hour, day_of_month, month_of_year, day_of_week = line
        minute_expr, minutes = parse_field(MINUTE_SPEC, minute)
        hour_expr, hours = parse_field(HOUR_SPEC, hour)
        dow_expr, dows = parse_field(DOW_SPEC, day_of_week)
        dom_expr, doms = parse_field(DOM_SPEC, day_of_month)
        month_expr, months = parse_field(MONTH_SPEC, month_of_year)
        zone = _coerce_tz(tz, "crontab")
        # Every (month, day) pair that can exist occurs on every weekday within a 400-year
        # cycle, so this is exactly the test for "fires at least once".
        if not any(day <= MAX_MONTH_DAYS[month] for month in months for day in doms):
            raise ConfigurationError(
                f"crontab can never fire: day_of_month={dom_expr!r} never occurs in "
                f"month_of_year={month_expr!r}"
            )
        set_ = object.__setattr__
        set_(self, "minute", minute_expr)
        set_(self, "hour", hour_expr)
        set_(self, "day_of_week", dow_expr)
        set_(self, "day_of_month", dom_expr)
        set_(self, "month_of_year", month_expr)
        set_(self, "tz", zone)
        set_(self, "_minutes", minutes)
        set_(self, "_hours", hours)
        set_(self, "_days_of_week", frozenset(dows))
        set_(self, "_days_of_month", doms)
        set_(self, "_months", months)
        set_(self, "_tz_key", _tz_key(zone))

    @classmethod
    def from_string(cls, expression: str, *, tz: ZoneInfo | str | None = None) -> Self:
        """Build from a classic five-field line: ``minute hour day_of_month month_of_year day_of_week``.

        Note the classic order puts the day of the month before the day of the week, unlike
        the keyword order of the constructor.
        """
        if not isinstance(expression, str):
            raise ConfigurationError(f"crontab expression must be a string, got {expression!r}")
        fields = expression.split()
        if len(fields) != 5:
            raise ConfigurationError(
                f"crontab expression {expression!r} has {len(fields)} fields; expected five: "
                "minute hour day_of_month month_of_year day_of_week"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a crontab from :meth:`to_dict` output; missing fields default to ``*``."""
        _check_keys(data, "crontab", {*FIELD_NAMES, "tz"})
        return cls(**{name: data.get(name, "*") for name in FIELD_NAMES}, tz=data.get("tz"))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict that :meth:`from_dict` and :func:`schedule_from` accept."""
        data: dict[str, Any] = {"type": "crontab"}
        data.update((name, getattr(self, name)) for name in FIELD_NAMES)
        if self._tz_key is not None:
            data["tz"] = self._tz_key
        return data

    def with_tz(self, tz: ZoneInfo | str | None) -> Self:
        """Return a copy in ``tz`` if this crontab has no time zone yet, else ``self``."""
        if self.tz is not None or tz is None:
            return self
        return type(self)(
            self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year, tz=tz
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELD_NAMES)
        tz = f", tz={self._tz_key!r}" if self._tz_key is not None else ""
        return f"crontab({fields}{tz})"

    def next_after(self, after: datetime) -> datetime:
        """Return the first fire time strictly after ``after``, as an aware datetime in the schedule's zone.

        Compare results as instants, e.g. after ``.astimezone(UTC)``: by PEP 495 a datetime inside
        a repeated (fall-back) hour never compares ``==`` to a datetime in another zone, and
        subtracting two datetimes that share a zone measures wall-clock time.

        Raises:
            ValueError: ``after`` is naive.
        """
        _require_aware(after)
        zone = self.tz or UTC
        # Compare instants in UTC: aware datetimes sharing a tzinfo compare by wall time and
        # ignore fold, which is wrong inside a repeated hour.
        after_utc = after.astimezone(UTC)
        wall = after_utc.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        try:
            fire = self._first_fire(wall - self._gap_margin(after_utc, zone), after_utc, zone)
        except OverflowError:
            fire = None
        if fire is None:
            raise ConfigurationError(f"{self!r} has no fire time after {after.isoformat()}")
        return fire.astimezone(zone)

    def _first_fire(self, start: datetime, after_utc: datetime, zone: tzinfo) -> datetime | None:
        candidate = self._next_wall(start)
        while candidate is not None and _resolve(candidate, zone) <= after_utc:
            candidate = self._next_wall(candidate + _MINUTE)
        if candidate is None:
            return None
        fire = _resolve(candidate, zone)
        shifted = fire.astimezone(zone).replace(tzinfo=None)
        if shifted == candidate:
            return fire
        # The candidate sits in a spring-forward gap and fires at its shifted time. Wall times
        # between it and that shifted time which lie past the gap fire earlier, so the first
        # wall-time match is not necessarily the first instant (e.g. 30-minute DST shifts).
        best = fire
        probe = self._next_wall(candidate + _MINUTE)
        while probe is not None and probe < shifted:
            probe_fire = _resolve(probe, zone)
            if after_utc < probe_fire < best:
                best = probe_fire
            probe = self._next_wall(probe + _MINUTE)
        return best

    @staticmethod
    def _gap_margin(after_utc: datetime, zone: tzinfo) -> timedelta:
        # Gap wall times fire *later* than their wall time reads, so a wall time just before
        # ``after``'s own can still fire after it; rewind the search by the recent jump.
        if zone is UTC:
            return _ZERO
        now_offset = after_utc.astimezone(zone).utcoffset() or _ZERO
        day_before_offset = (after_utc - timedelta(days=1)).astimezone(zone).utcoffset() or _ZERO
        return max(_ZERO, now_offset - day_before_offset)

    def _next_wall(self, start: datetime) -> datetime | None:
        """First matching naive wall time at or after the minute-aligned ``start``.

        Steps field by field, coarsest first, resetting the finer fields whenever a coarser one
        moves, so a yearly schedule costs a handful of iterations rather than minute scans.
        """
        limit = min(start.year + _HORIZON_YEARS, datetime.max.year)
        year, month, day, hour, minute = start.year, start.month, start.day, start.hour, start.minute
        while year <= limit:
            i = bisect_left(self._months, month)
            if i == len(self._months):
                year, month, day, hour, minute = year + 1, self._months[0], 1, 0, 0
                continue
            if self._months[i] != month:
                month, day, hour, minute = self._months[i], 1, 0, 0
            matched_day = self._match_day(year, month, day)
            if matched_day is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if matched_day != day:
                day, hour, minute = matched_day, 0, 0
            i = bisect_left(self._hours, hour)
            if i == len(self._hours):
                day, hour, minute = day + 1, 0, 0
                continue
            if self._hours[i] != hour:
                hour, minute = self._hours[i], 0
            i = bisect_left(self._minutes, minute)
            if i == len(self._minutes):
                hour, minute = hour + 1, 0
                continue
            return datetime(year, month, day, hour, self._minutes[i])
        return None

    def _match_day(self, year: int, month: int, day: int) -> int | None:
        last = monthrange(year, month)[1]
        for candidate in self._days_of_month[bisect_left(self._days_of_month, day) :]:
            if candidate > last:
                return None
            # Python counts Monday as 0; cron counts Sunday as 0.
            if (datetime(year, month, candidate).weekday() + 1) % 7 in self._days_of_week:
                return candidate
        return None


def _resolve(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant a naive wall time fires at: fold=0, so gaps shift forward and repeats fire first."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


@dataclass(frozen=True, init=False, repr=False)
class interval:  # noqa: N801 - Celery-style lowercase name, matching crontab
    """Fire every ``period`` of elapsed time.

    ``period`` is a ``timedelta`` or a number of seconds (int or float) and must be positive.
    The period is elapsed (absolute) time, so it is unaffected by DST: five minutes after
    01:58 CET on a spring-forward night is 03:03 CEST.
    """

    period: timedelta
    tz: ZoneInfo | None = field(compare=False)
    _tz_key: str | None

    def __init__(self, period: timedelta | float, *, tz: ZoneInfo | str | None = None) -> None:
        """Validate ``period`` (positive, finite) and ``tz``; raise ConfigurationError otherwise."""
        if isinstance(period, bool) or not isinstance(period, timedelta | int | float):
            raise ConfigurationError(f"interval period must be a timedelta or seconds, got {period!r}")
        if not isinstance(period, timedelta):
            if not math.isfinite(period):
                raise ConfigurationError(f"interval period must be finite, got {period!r}")
            try:
                period = timedelta(seconds=period)
            except OverflowError as exc:
                raise ConfigurationError(f"interval period {period!r} is too large") from exc
        if period <= _ZERO:
            raise ConfigurationError(f"interval period must be positive, got {period!r}")
        zone = _coerce_tz(tz, "interval")
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "tz", zone)
        object.__setattr__(self, "_tz_key", _tz_key(zone))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild an interval from :meth:`to_dict` output."""
        _check_keys(data, "interval", {"seconds", "tz"})
        if "seconds" not in data:
            raise ConfigurationError("interval schedule dict needs a 'seconds' key")
        return cls(data["seconds"], tz=data.get("tz"))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict that :meth:`from_dict` and :func:`schedule_from` accept."""
        data: dict[str, Any] = {"type": "interval", "seconds": self.period.total_seconds()}
        if self._tz_key is not None:
            data["tz"] = self._tz_key
        return data

    def with_tz(self, tz: ZoneInfo | str | None) -> Self:
        """Return a copy in ``tz`` if this interval has no time zone yet, else ``self``."""
        if self.tz is not None or tz is None:
            return self
        return type(self)(self.period, tz=tz)

    def __repr__(self) -> str:
        tz = f", tz={self._tz_key!r}" if self._tz_key is not None else ""
        return f"interval({self.period.total_seconds()!r}{tz})"

    def next_after(self, after: datetime) -> datetime:
        """Return ``after + period`` in the schedule's zone, or in ``after``'s zone if it has none.

        Raises:
            ValueError: ``after`` is naive.
        """
        _require_aware(after)
        # Add in UTC: adding to a zoneinfo-aware datetime moves its wall clock, not elapsed time.
        return (after.astimezone(UTC) + self.period).astimezone(self.tz or after.tzinfo)


def schedule_from(value: object) -> Schedule:
    """Coerce a user-facing value to a :class:`Schedule`.

    Accepts a :class:`Schedule` (returned as is), a ``timedelta`` or a number of seconds (an
    :class:`interval`), or a dict produced by ``to_dict()``. Anything else raises
    :class:`~asyncq.exceptions.ConfigurationError`.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"cannot use {value!r} as a schedule")
    if isinstance(value, timedelta | int | float):
        return interval(value)
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "crontab":
            return crontab.from_dict(value)
        if kind == "interval":
            return interval.from_dict(value)
        raise ConfigurationError(f"unknown schedule type {kind!r}; expected 'crontab' or 'interval'")
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        raise ConfigurationError(
            f"cannot use the string {value!r} as a schedule; "
            f"for a cron line use crontab.from_string({value!r})"
        )
    raise ConfigurationError(
        f"cannot use {value!r} as a schedule; expected a crontab, an interval, a timedelta, "
        "a number of seconds or a schedule dict"
    )
