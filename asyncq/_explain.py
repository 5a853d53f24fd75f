"""Turning a failed encoding of task arguments into an error that names the task and the argument."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from asyncq.exceptions import SerializationError
from asyncq.message import Message
from asyncq.serializers import Serializers

__all__ = ["unserializable_argument"]

_JSON_TYPES = "str, int, float, bool, None, list, dict, datetime, date, time, UUID, Decimal, bytes, set"


def _parameter_names(fn: Callable[..., Any] | None, bound: bool) -> list[str]:
    if fn is None:
        return []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # callables without a signature: positions only
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[1:] if bound else names  # a bound task's first parameter is the task itself


def _labelled(message: Message, names: list[str]) -> Iterator[tuple[str, Any]]:
    for position, value in enumerate(message.args):
        name = f"{names[position]!r} " if position < len(names) else ""
        yield f"argument {name}(position {position})", value
    for key, value in message.kwargs.items():
        yield f"keyword argument {key!r}", value


def unserializable_argument(
    message: Message, serializers: Serializers, fn: Callable[..., Any] | None = None, *, bound: bool = False
) -> SerializationError | None:
    """The error naming the first argument of ``message`` its serializer cannot encode, or None.

    ``fn`` (the task's function, when this process has it) supplies the parameter names;
    ``bound`` says its first parameter is the task.
    """
    serializer = serializers.get(message.content_type)
    for label, value in _labelled(message, _parameter_names(fn, bound)):
        try:
            serializer.dumps([value])
        except SerializationError as exc:
            if serializer.name == "json":
                advice = (
                    f"pass JSON-friendly values ({_JSON_TYPES}), or a serializer that can encode it: "
                    "serializer='pickle' on the task or in apply_async, with 'pickle' in accept_content"
                )
            else:
                advice = "pass a value it can encode, or choose another serializer"
            reason = str(exc).partition(": ")[2] or str(exc)
            return SerializationError(
                f"cannot send task {message.task!r}: {label} of type {type(value).__qualname__} "
                f"cannot be encoded by the {serializer.name} serializer ({reason}); {advice}"
            )
    return None
