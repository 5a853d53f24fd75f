"""Fair queuing across tenants: what a task declares (``fair_key=``, ``fair_weights=``), checked once.

A fair task's messages carry their key (and a weight other than 1) in two headers; the broker
reads them from :class:`~asyncq.brokers.base.OutgoingMessage` (``fair_key``, ``fair_weight``)
and serves the keys of a queue in turn, so one key flooding a queue does not hold the others
back. Brokers whose capabilities say ``fair_queuing=False`` ignore the key (plain FIFO).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from asyncq.exceptions import ConfigurationError
from asyncq.keys import KeyOf, key_function

__all__ = ["FAIR_KEY_HEADER", "FAIR_WEIGHT_HEADER", "MAX_WEIGHT", "FairSpec", "fair_fields", "fair_spec"]

#: The headers carrying a fair message's key and (when not 1) its weight.
FAIR_KEY_HEADER: Final = "fair_key"
FAIR_WEIGHT_HEADER: Final = "fair_weight"
MAX_WEIGHT: Final = 1000


@dataclass(frozen=True, slots=True)
class FairSpec:
    """How a call's fair key is found, and the weights of named keys (others weigh 1)."""

    key_of: KeyOf
    weights: Mapping[str, int] = field(default_factory=dict)

    def headers(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The headers of one call's message."""
        key = self.key_of(args, kwargs)
        weight = self.weights.get(key, 1)
        if weight == 1:
            return {FAIR_KEY_HEADER: key}
        return {FAIR_KEY_HEADER: key, FAIR_WEIGHT_HEADER: weight}


def fair_spec(
    task_name: str,
    fn: Callable[..., Any],
    key: str | Callable[..., Any] | None,
    weights: Mapping[str, int] | None,
    *,
    bind: bool,
) -> FairSpec | None:
    """The task's fair-queuing key, or None; a bad declaration is a ConfigurationError naming it."""
    if key is None:
        if weights:
            raise ConfigurationError(f"task {task_name!r}: fair_weights needs fair_key=")
        return None
    checked: dict[str, int] = {}
    for name, weight in dict(weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise ConfigurationError(
                f"task {task_name!r}: fair_weights[{name!r}] must be an integer 1-{MAX_WEIGHT},"
                f" not {weight!r}"
            )
        checked[str(name)] = weight
    return FairSpec(key_function(task_name, "fair_key", fn, key, bind=bind), checked)


def fair_fields(headers: Mapping[str, Any] | None) -> tuple[str | None, int]:
    """A message's fair key and weight, read from its headers: ``(None, 1)`` for a plain one."""
    fair_key = headers.get(FAIR_KEY_HEADER) if headers else None
    if fair_key is None or headers is None:
        return None, 1
    weight = headers.get(FAIR_WEIGHT_HEADER)
    # A header written by another producer: anything but a sane integer weighs 1.
    if isinstance(weight, int) and not isinstance(weight, bool):
        return str(fair_key), min(MAX_WEIGHT, max(1, weight))
    return str(fair_key), 1
