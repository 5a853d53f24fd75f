"""Option chores shared by the sqs:// and kafka:// drivers: merge, refuse unknown names, convert.

Keyword options win over the URL query; an unknown name is refused with a "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from asyncq.exceptions import ConfigurationError

__all__ = ["boolean", "merge_options", "number"]


def merge_options(
    scheme: str, url: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The URL query and keyword options over ``defaults``; unknown names are refused."""
    merged = dict(defaults)
    given: dict[str, Any] = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    given.update(options)
    for name, value in given.items():
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(defaults))}"
            raise ConfigurationError(f"unknown {scheme}:// option {name!r}{hint}")
        merged[name] = value
    return merged


def boolean(scheme: str, name: str, value: Any) -> bool:
    """``value`` (a bool, or true/false/1/0/yes/no/on/off) as a bool, or a clear error."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{scheme}:// option {name}={value!r} is not a boolean (true/false)")


def number(scheme: str, name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a number within [low, high], or a clear error."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{scheme}:// option {name}={value!r} is not a number") from None
    if isinstance(value, bool) or not low <= result <= high:
        raise ConfigurationError(f"{scheme}:// option {name}={value!r} must be between {low:g} and {high:g}")
    return result
