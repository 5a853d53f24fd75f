"""Rate limiting of the login form: failed attempts counted per client address and per user name.

After ``attempts`` failures within ``window`` seconds, from one address or against one user
name, further attempts are refused with 429 and ``Retry-After`` until the oldest failure in the
window ages out, whether or not their credentials are right: guessing gets a few tries a
minute, wherever it comes from. A successful login clears its address and user name. Wrong
bearer tokens on the API count against the client's address too.

The counts live in the dashboard's memory (one process): bounded to ``max_keys`` keys, the
least recently failed forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["LoginThrottle"]

_MAX_KEYS: Final = 10_000


class LoginThrottle:
    """Counts failed logins per key (``addr:<ip>``, ``user:<name>``) in a sliding window.

    Args:
        attempts: failures allowed per key within ``window`` (0 turns the limit off).
        window: seconds a failure counts for.
    """

    def __init__(
        self,
        attempts: int = 5,
        window: float = 60.0,
        *,
        max_keys: int = _MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 0:
            raise ValueError(f"dashboard_login_attempts must be >= 0, got {attempts}")
        if not window > 0:
            raise ValueError(f"dashboard_login_window must be > 0, got {window}")
        self.attempts = attempts
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @staticmethod
    def keys(address: str | None, username: str | None) -> list[str]:
        """The keys one attempt counts against: its client address and the user name it tried."""
        keys = [f"addr:{address or 'unknown'}"]
        if username:
            keys.append(f"user:{username}")
        return keys

    def retry_after(self, keys: Iterable[str]) -> int:
        """Whole seconds to wait before another attempt under ``keys`` is heard; 0 if it may go now."""
        if self.attempts == 0:
            return 0
        now = self._clock()
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self.attempts:
                # The attempt that brings the count under the limit: when this failure ages out.
                wait = max(wait, failures[-self.attempts] + self.window - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys: Iterable[str]) -> None:
        """Count one failed attempt against every key."""
        if self.attempts == 0:
            return
        now = self._clock()
        for key in keys:
            failures = self._failures.pop(key, None) or deque()
            failures.append(now)
            # A key never needs more than the limit's worth of failures to decide.
            while len(failures) > self.attempts:
                failures.popleft()
            self._failures[key] = failures  # most recently failed last
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        """Forget the failures under ``keys`` (a login succeeded)."""
        for key in keys:
            self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures
