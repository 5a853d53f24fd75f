"""GCRA (generic cell rate algorithm) arithmetic, pure: the store scripts do the same sums.

A limit of ``rate`` starts per second has an emission interval ``T = 1 / rate``. The state is
one number per limit, the theoretical arrival time ``tat``: a start at time ``t`` conforms if
``t >= tat - tau`` (``tau = (burst - 1) * T``, the burst tolerance), and moves ``tat`` to
``max(tat, t) + T``. Instead of refusing a start that does not conform, :func:`reserve` books
the earliest time it will: a caller is told how long to wait once, and never asks again.
"""

from __future__ import annotations

__all__ = ["reserve"]


def reserve(tat: float, now: float, interval: float, count: int, burst: int = 1) -> tuple[float, list[float]]:
    """Book ``count`` starts; return the new ``tat`` and each start's wait in seconds from ``now``.

    Args:
        tat: the stored theoretical arrival time (0 for a limit never used).
        now: the store's clock.
        interval: seconds between starts (``1 / rate``).
        count: starts to book, in order.
        burst: starts allowed back to back after an idle period (1: evenly spaced).
    """
    if interval <= 0 or count < 0 or burst < 1:
        raise ValueError(f"bad GCRA arguments: interval={interval}, count={count}, burst={burst}")
    tolerance = (burst - 1) * interval
    waits: list[float] = []
    for _ in range(count):
        start = max(now, tat - tolerance)
        tat = max(tat, start) + interval
        waits.append(start - now)
    return tat, waits
