"""What a unique task declares, checked once, and the lock key of one call."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from asyncq.exceptions import ConfigurationError
from asyncq.keys import KeyOf, key_function

__all__ = ["UNIQUE_HEADER", "UniqueSpec", "unique_spec"]

#: The message header naming the lock a unique task's message holds (released when it finishes).
UNIQUE_HEADER: Final = "unique_key"


@dataclass(frozen=True, slots=True)
class UniqueSpec:
    """A unique task's lock: the key of a call, and its TTL (None: the app's ``task_unique_ttl``)."""

    key_of: KeyOf
    ttl: float | None

    def key(self, task_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The lock key of one call: the task's name, then the key's value."""
        return f"{task_name}:{self.key_of(args, kwargs)}"


def _arguments_digest(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    # Canonical JSON, so equal calls give one key whatever the keyword order; repr() for the rest.
    text = json.dumps([list(args), dict(kwargs)], sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def unique_spec(
    task_name: str,
    fn: Callable[..., Any],
    *,
    unique: bool,
    key: str | Callable[..., Any] | None,
    ttl: float | None,
    bind: bool,
) -> UniqueSpec | None:
    """The task's lock, or None when it is not unique; a bad declaration is a ConfigurationError."""
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise ConfigurationError(
            f"task {task_name!r}: unique_ttl must be a number of seconds > 0, not {ttl!r}"
        )
    if key is not None:
        return UniqueSpec(key_function(task_name, "unique_key", fn, key, bind=bind), ttl)
    if unique:
        return UniqueSpec(_arguments_digest, ttl)
    if ttl is not None:
        raise ConfigurationError(f"task {task_name!r}: unique_ttl needs unique=True or unique_key=")
    return None
