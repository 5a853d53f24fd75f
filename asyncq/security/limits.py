"""Limits on what a message may be: its size in bytes and the nesting depth of its arguments."""

from __future__ import annotations

from typing import Any

from asyncq.exceptions import MessageTooLargeError, SerializationError

__all__ = ["check_depth", "check_size"]

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def check_size(size: int, limit: int | None, task: str | None = None) -> None:
    """Raise :class:`MessageTooLargeError` if ``size`` bytes exceed ``limit`` (None: no limit)."""
    if limit is not None and size > limit:
        what = f"message of task {task!r}" if task else "message"
        raise MessageTooLargeError(
            f"{what} is {size} bytes, over the message_max_bytes limit of {limit} bytes; "
            "pass a reference (a key, a URL) to large data instead of the data itself"
        )


def check_depth(value: Any, limit: int | None) -> None:
    """Raise :class:`SerializationError` if containers in ``value`` nest deeper than ``limit``.

    Iterative, so a hostile structure cannot exhaust the interpreter's stack here.
    """
    if limit is None or not value:
        return
    # Fast path for the common case, flat arguments: no container inside, nothing to walk.
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list | tuple) and limit > 0 and all(type(v) in _SCALARS for v in items):
        return
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth >= limit:
            raise SerializationError(f"message arguments nest deeper than message_max_depth={limit}")
        stack.extend((child, depth + 1) for child in children)
