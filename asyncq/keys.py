"""Per-call keys of a task (``unique_key=``, ``fair_key=``): a callable or the name of an argument.

A task option naming a key is either a callable given the call's arguments (``lambda
user_id, **_: user_id``) or the name of one of the function's parameters; :func:`key_function`
checks it once, when the task is made, and returns ``key_of(args, kwargs) -> str``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from asyncq.exceptions import ConfigurationError

__all__ = ["KeyOf", "key_function"]

KeyOf = Callable[[tuple[Any, ...], Mapping[str, Any]], str]


def key_function(
    task_name: str, option: str, fn: Callable[..., Any], key: str | Callable[..., Any], *, bind: bool
) -> KeyOf:
    """``key_of(args, kwargs)`` for the option ``option`` of a task; a bad value is a ConfigurationError."""
    if callable(key):
        call = key
        return lambda args, kwargs: str(call(*args, **kwargs))
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"task {task_name!r}: {option} must be an argument name or a callable, not {key!r}"
        )
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): look the name up in kwargs only
        return lambda args, kwargs: str(kwargs.get(key))
    if bind:
        parameters = parameters[1:]  # the task itself
    for index, parameter in enumerate(parameters):
        if parameter.name != key:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            break
        positional = parameter.kind is not inspect.Parameter.KEYWORD_ONLY
        return _parameter_key(key, index if positional else None, parameter.default)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return lambda args, kwargs: str(kwargs.get(key))
    names = ", ".join(p.name for p in parameters) or "none"
    raise ConfigurationError(f"task {task_name!r}: {option}={key!r} names no argument; arguments: {names}")


def _parameter_key(name: str, index: int | None, default: Any) -> KeyOf:
    """The value of parameter ``name`` (at ``index`` when it may be passed positionally)."""
    missing = None if default is inspect.Parameter.empty else default

    def key_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if name in kwargs:
            return str(kwargs[name])
        if index is not None and index < len(args):
            return str(args[index])
        return str(missing)

    return key_of
