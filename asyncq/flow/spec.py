"""What a task declares about its limits, checked once when the task is made.

``rate_limit_scope``: ``"global"`` (one limit shared by every worker, in the broker's store)
or ``"worker"`` (each worker its own bucket). ``concurrency_key`` with ``max_concurrency``:
at most that many running at once per key across the cluster; the key is a callable given the
task's arguments by name (``lambda tenant_id, **_: tenant_id``), or the name of one argument.
``max_concurrency`` alone limits the task as a whole.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from asyncq.exceptions import ConfigurationError

__all__ = ["RATE_SCOPES", "ConcurrencyLimit", "check_rate_scope", "concurrency_limit"]

RATE_SCOPES: Final = ("global", "worker")

KeyOf = Callable[[Sequence[Any], Mapping[str, Any]], object]


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most ``limit`` runs at once per key; ``key_of(args, kwargs)`` gives a message's key."""

    limit: int
    key_of: KeyOf
    described: str  # how the key is chosen, for stats

    def key(self, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The store key of one call (the task's name, then the key's value)."""
        return f"{task_name}:{self.key_of(args, kwargs)}"


def check_rate_scope(task_name: str, scope: str | None) -> None:
    """Refuse an unknown ``rate_limit_scope``."""
    if scope is not None and scope not in RATE_SCOPES:
        raise ConfigurationError(
            f"task {task_name!r}: rate_limit_scope must be 'global' or 'worker', not {scope!r}"
        )


def concurrency_limit(
    task_name: str,
    fn: Callable[..., Any],
    key: str | Callable[..., Any] | None,
    limit: int | None,
    *,
    bind: bool,
) -> ConcurrencyLimit | None:
    """The task's concurrency limit, or None; a bad declaration is a ConfigurationError naming it."""
    if key is None and limit is None:
        return None
    if limit is None or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(
            f"task {task_name!r}: max_concurrency must be an integer >= 1 (with or without "
            f"concurrency_key), not {limit!r}"
        )
    if key is None:
        return ConcurrencyLimit(limit, lambda args, kwargs: "*", "the whole task")
    if callable(key):
        return ConcurrencyLimit(limit, _by_name(fn, key, bind=bind), "a callable")
    if isinstance(key, str):
        return ConcurrencyLimit(limit, _argument(task_name, fn, key, bind=bind), f"argument {key!r}")
    raise ConfigurationError(
        f"task {task_name!r}: concurrency_key must be an argument name or a callable, not {key!r}"
    )


def _by_name(fn: Callable[..., Any], key: Callable[..., Any], *, bind: bool) -> KeyOf:
    """Call ``key`` with the task's arguments by name (``lambda tenant_id, **_: tenant_id``)."""
    signature = inspect.signature(fn)
    if bind:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    spread = {p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD}

    def key_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> object:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # the call does not fit the task: the task will say so when it runs
            return key(*args, **kwargs)
        bound.apply_defaults()
        named = dict(bound.arguments)
        for name in spread:
            named.update(named.pop(name))
        return key(**named)

    return key_of


def _argument(task_name: str, fn: Callable[..., Any], name: str, *, bind: bool) -> KeyOf:
    parameters = list(inspect.signature(fn).parameters.values())
    if bind:
        parameters = parameters[1:]  # the task itself
    by_name = {p.name: p for p in parameters}
    parameter = by_name.get(name)
    if parameter is None:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return lambda args, kwargs: kwargs.get(name)
        raise ConfigurationError(
            f"task {task_name!r}: concurrency_key={name!r} names no argument; "
            f"known: {', '.join(by_name) or 'none'}"
        )
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    index = parameters.index(parameter) if parameter.kind in positional else None
    default = None if parameter.default is inspect.Parameter.empty else parameter.default

    def key_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> object:
        if name in kwargs:
            return kwargs[name]
        if index is not None and index < len(args):
            return args[index]
        return default

    return key_of
