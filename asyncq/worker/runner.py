"""Compatibility import path: the service runner moved to :mod:`asyncq.runner` (beat uses it too)."""

from asyncq.runner import (
    MAIN_GUARD_HINT,
    loop_factory,
    refuse_in_spawned_child,
    run_until_signalled,
)

__all__ = ["MAIN_GUARD_HINT", "loop_factory", "refuse_in_spawned_child", "run_until_signalled"]
