"""Driver options: typed specs and the one parser every driver uses for its URL query and keywords.

A driver declares each option once, as an :class:`Option` (name, converter, default), and
parses the URL query and the keyword options (``broker_transport_options`` /
``result_backend_transport_options``) together with :func:`parse_options`. Keywords win over
the query. The result is read back typed: ``settings[PUBLISH_TIMEOUT]`` is a ``float``.

Errors are one-line :class:`~asyncq.exceptions.ConfigurationError`\\ s:

* an unknown option names itself, suggests the closest known name, and lists the known ones:
  ``unknown amqp broker option 'exchnage' (did you mean 'exchange'?); known: exchange, ...``
* a bad value names the option, the value (a password-like option's value is hidden) and
  what was expected: ``amqp broker option max_deliveries='x': expected an integer >= 1``.

Options that belong to someone else pass through instead of being refused: ``passthrough``
names those handed on to the client library (returned as strings, e.g. aio-pika's
``heartbeat``), ``shared`` those of the other driver of a shared URL (skipped).

Every driver parses with it: a driver module keeps only its spec table and product-specific
checks, and reports those with :func:`option_error` so every message reads alike. The Redis
drivers keep their ``Option(kind, default, doc)`` tables and convert them by kind
(asyncq/_redis/options.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload
from urllib.parse import parse_qsl

from asyncq.exceptions import ConfigurationError

__all__ = [
    "Option",
    "Settings",
    "boolean",
    "choice",
    "convert",
    "integer",
    "items",
    "number",
    "option_error",
    "optional",
    "parse_options",
    "seconds",
    "text",
]

T = TypeVar("T")

#: A converter takes a keyword value or a URL query string and returns the typed value, or
#: raises ValueError whose message says what was expected ("an integer >= 1").
Converter = Callable[[object], T]

_SECRET_WORDS = ("password", "secret", "token")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Option(Generic[T]):
    """One driver option: its name, how a value becomes a ``T``, and the default (not converted)."""

    name: str
    convert: Converter[T]
    default: T


class Settings:
    """Parsed options of one driver; ``settings[OPTION]`` is typed by the option."""

    __slots__ = ("_given", "passthrough", "values")

    def __init__(self, values: dict[str, Any], passthrough: dict[str, str], given: Collection[str]) -> None:
        self.values = values  # every known option by name, defaults filled in
        self.passthrough = passthrough  # the ``passthrough`` options given, as query strings
        self._given = frozenset(given)

    @overload
    def __getitem__(self, option: Option[T]) -> T: ...
    @overload
    def __getitem__(self, option: str) -> Any: ...
    def __getitem__(self, option: Option[Any] | str) -> Any:
        return self.values[option if isinstance(option, str) else option.name]

    def given(self, option: Option[Any]) -> bool:
        """Whether the option was set (in the URL or as a keyword), not left at its default."""
        return option.name in self._given


def parse_options(
    query: str | Iterable[tuple[str, str]],
    options: Mapping[str, object],
    specs: Iterable[Option[Any]],
    *,
    what: str,
    passthrough: Collection[str] = (),
    shared: Collection[str] = (),
) -> Settings:
    """Validate the URL ``query`` (a query string or its pairs) and keyword ``options``.

    ``what`` names the driver in messages ("amqp broker", "sqlite backend").

    Raises:
        ConfigurationError: an unknown option, or a value its converter refuses.
    """
    known = {spec.name: spec for spec in specs}
    pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else list(query)
    merged: dict[str, object] = {name: value for name, value in pairs if name not in shared or name in known}
    merged.update(options)
    unknown = [name for name in merged if name not in known and name not in passthrough]
    if unknown:
        raise ConfigurationError(_unknown_message(unknown, [*known, *passthrough], what))
    values = {name: spec.default for name, spec in known.items()}
    given = []
    for name, value in merged.items():
        if name in known:
            values[name] = convert(known[name], value, what)
            given.append(name)
    forwarded = {name: _query_value(value) for name, value in merged.items() if name in passthrough}
    return Settings(values, forwarded, given)


def convert(spec: Option[T], value: object, what: str) -> T:
    """``value`` converted by ``spec``, or a one-line ConfigurationError naming the option."""
    try:
        return spec.convert(value)
    except (TypeError, ValueError) as exc:
        raise option_error(what, spec.name, value, f"expected {exc}") from None


def option_error(what: str, name: str, value: object, problem: str) -> ConfigurationError:
    """The one-line error for option ``name``'s ``value`` (hidden for a password-like name).

    For a driver's own checks beyond a converter, so every message reads alike:
    ``sqs broker option endpoint_url='x': must start with http:// or https://``.
    """
    shown = "'***'" if any(word in name for word in _SECRET_WORDS) else repr(value)
    return ConfigurationError(f"{what} option {name}={shown}: {problem}")


def _unknown_message(unknown: list[str], known: list[str], what: str) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    noun = "option" if len(unknown) == 1 else "options"
    return f"unknown {what} {noun} {', '.join(hints)}; known: {', '.join(sorted(known))}"


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# -- converters ------------------------------------------------------------------------------------


def text(value: object) -> str:
    """Any string (a keyword value that is not a string is refused)."""
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def boolean(value: object) -> bool:
    """True/False, or in a URL one of 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError("a boolean (true/false, 1/0, yes/no, on/off)")


def integer(minimum: int | None = None, maximum: int | None = None) -> Converter[int]:
    """An int (or a URL string of one), at least ``minimum`` and at most ``maximum``."""
    expected = _expected("an integer", minimum, maximum)

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(expected)
        try:
            number = int(value)
        except ValueError:
            raise ValueError(expected) from None
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise ValueError(expected)
        return number

    return convert


def number(
    minimum: float | None = None, maximum: float | None = None, *, positive: bool = False
) -> Converter[float]:
    """A float (or a URL string of one): within [``minimum``, ``maximum``], above 0 with ``positive``."""
    expected = "a number > 0" if positive and maximum is None else _expected("a number", minimum, maximum)

    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(expected)
        try:
            result = float(value)
        except ValueError:
            raise ValueError(expected) from None
        low = (positive and not result > 0) or (minimum is not None and result < minimum)
        if result != result or low or (maximum is not None and result > maximum):
            raise ValueError(expected)  # NaN compares false with everything: refused too
        return result

    return convert


def _expected(noun: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{noun} between {minimum:g} and {maximum:g}"
    if minimum is not None:
        return f"{noun} >= {minimum:g}"
    return noun if maximum is None else f"{noun} <= {maximum:g}"


#: Seconds, above zero (timeouts, intervals).
seconds: Converter[float] = number(positive=True)


def choice(*allowed: str) -> Converter[str]:
    """One of the ``allowed`` strings."""
    expected = f"one of {', '.join(allowed)}"

    def convert(value: object) -> str:
        if value not in allowed:
            raise ValueError(expected)
        return str(value)

    return convert


def optional(inner: Converter[T]) -> Converter[T | None]:
    """``inner``, or None when the value is None or an empty URL string."""

    def convert(value: object) -> T | None:
        if value is None or value == "":
            return None
        return inner(value)

    return convert


def items(inner: Converter[T]) -> Converter[tuple[T, ...]]:
    """A comma-separated URL string (or a keyword list/tuple), each item converted by ``inner``."""

    def convert(value: object) -> tuple[T, ...]:
        if isinstance(value, str):
            parts: list[object] = [part.strip() for part in value.split(",")]
        elif isinstance(value, list | tuple):
            parts = list(value)
        else:
            raise ValueError("a comma-separated list")
        try:
            return tuple(inner(part) for part in parts)
        except ValueError as exc:
            raise ValueError(f"a comma-separated list of {exc}") from None

    return convert
