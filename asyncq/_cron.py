"""Crontab fields: parsing ``"*/15"``, ``"mon-fri"``, ``"1,15"`` into the values they allow.

Private to :mod:`asyncq.schedules` (``crontab``); errors name the field and the expression.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from asyncq.exceptions import ConfigurationError

__all__ = [
    "DOM_SPEC",
    "DOW_SPEC",
    "FIELD_NAMES",
    "HOUR_SPEC",
    "MAX_MONTH_DAYS",
    "MINUTE_SPEC",
    "MONTH_NAMES",
    "MONTH_SPEC",
    "WEEKDAY_NAMES",
    "FieldSpec",
    "FieldValue",
    "cron_line",
    "parse_field",
]

WEEKDAY_NAMES = {
    name: number
    for number, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ]
    )
    for name in names
}
MONTH_NAMES = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may", "may"),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
# Days a month can ever have; February counts its leap day.
MAX_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}

_PART = re.compile(r"^(?:(?P<star>\*)|(?P<start>\w+)(?:-(?P<end>\w+))?)(?:/(?P<step>\w+))?$")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    low: int
    # Highest value an expression may name; day_of_week accepts 7 as a second Sunday.
    high: int
    # Highest value of the cycle ``*`` and wrap-around ranges run over.
    cycle_high: int
    names: Mapping[str, int]


MINUTE_SPEC = FieldSpec("minute", 0, 59, 59, {})
HOUR_SPEC = FieldSpec("hour", 0, 23, 23, {})
DOW_SPEC = FieldSpec("day_of_week", 0, 7, 6, WEEKDAY_NAMES)
DOM_SPEC = FieldSpec("day_of_month", 1, 31, 31, {})
MONTH_SPEC = FieldSpec("month_of_year", 1, 12, 12, MONTH_NAMES)

FieldValue = int | str | Iterable[int]
FIELD_NAMES = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def _field_error(spec: FieldSpec, expr: object, reason: str) -> ConfigurationError:
    return ConfigurationError(f"invalid crontab field {spec.name}={expr!r}: {reason}")


def _normalise_field(spec: FieldSpec, raw: object) -> str:
    """Turn an int, a string or an iterable of ints into the canonical expression string."""
    if isinstance(raw, bool):
        # bool is an int subclass; crontab(minute=True) is a mistake, not minute 1.
        raise _field_error(spec, raw, "expected an int, a string or an iterable of ints")
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str):
        return "".join(raw.split()).lower()
    if isinstance(raw, Iterable) and not isinstance(raw, bytes | bytearray):
        values = list(raw)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _field_error(spec, values, "expected a non-empty iterable of ints")
        return ",".join(str(v) for v in sorted(set(values)))
    raise _field_error(spec, raw, "expected an int, a string or an iterable of ints")


def _parse_value(spec: FieldSpec, expr: str, token: str) -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
    elif token in spec.names:
        value = spec.names[token]
    else:
        kind = "a number or a name" if spec.names else "a number"
        raise _field_error(spec, expr, f"{token!r} is not {kind}")
    if not spec.low <= value <= spec.high:
        raise _field_error(spec, expr, f"value {value} out of range {spec.low}-{spec.high}")
    return value


def _parse_part(spec: FieldSpec, expr: str, part: str) -> list[int]:
    match = _PART.match(part)
    if match is None:
        raise _field_error(spec, expr, f"cannot parse {part!r}")
    star, start_token, end_token, step_token = match.group("star", "start", "end", "step")
    step = 1
    if step_token is not None:
        if not (step_token.isascii() and step_token.isdigit()) or int(step_token) == 0:
            raise _field_error(spec, expr, f"step {step_token!r} is not a positive integer")
        step = int(step_token)
        span = spec.cycle_high - spec.low + 1
        if step > span:
            # "*/61" would silently mean "minute 0 only": almost certainly not what was meant.
            raise _field_error(
                spec,
                expr,
                f"step {step} is larger than the field's {span} values ({spec.low}-{spec.cycle_high})",
            )
    if star is not None:
        return list(range(spec.low, spec.cycle_high + 1, step))
    start = _parse_value(spec, expr, start_token)
    if end_token is None:
        # "a/n" is the cron shorthand for "a-<max>/n"; a bare "a" is just that value.
        end = spec.cycle_high if step_token is not None else start
    else:
        end = _parse_value(spec, expr, end_token)
    if start > spec.cycle_high and end < start:
        # Only day_of_week gets here: "7-2" reads as Sunday through Tuesday.
        start = spec.low
    if end < start:
        # Celery's wrap-around: "fri-mon" or "22-2" run past the top of the cycle.
        values = list(range(start, spec.cycle_high + 1)) + list(range(spec.low, end + 1))
    else:
        values = list(range(start, end + 1))
    return values[::step]


def parse_field(spec: FieldSpec, raw: object) -> tuple[str, tuple[int, ...]]:
    expr = _normalise_field(spec, raw)
    values: set[int] = set()
    for part in expr.split(","):
        if not part:
            raise _field_error(spec, expr, "empty value")
        values.update(_parse_part(spec, expr, part))
    # Fold day_of_week's second Sunday (7) onto 0 so matching needs one representation.
    values = {v % 7 for v in values} if spec is DOW_SPEC else values
    return expr, tuple(sorted(values))


def cron_line(raw: object) -> list[str] | None:
    """The five fields of a cron line given as one string (None if ``raw`` is one field).

    Whitespace around commas is tolerated inside a field (``"1, 2"``); other whitespace
    separates fields, and anything but five of them is an error that points to from_string.
    """
    if not isinstance(raw, str):
        return None
    fields = re.sub(r"\s*,\s*", ",", raw.strip()).split()
    if len(fields) <= 1:
        return None
    if len(fields) != 5:
        raise ConfigurationError(
            f"invalid crontab field minute={raw!r}: it looks like a cron line with {len(fields)} fields; "
            "crontab.from_string() takes five: minute hour day_of_month month_of_year day_of_week"
        )
    return fields
