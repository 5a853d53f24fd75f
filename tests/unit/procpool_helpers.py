"""Functions run inside ProcessPool children by tests/unit/test_procpool.py.

They live in their own importable module because spawned children re-import callables by
reference and cannot see functions defined in a test module's local scope.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from asyncq.exceptions import SerializationError, SoftTimeLimitExceeded
from asyncq.worker.procpool import notify_parent


class Boom(Exception):
    """A picklable error raised by a child."""


class UnpicklableError(Exception):
    """An error that pickle.dumps refuses (it holds a lock)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class NeedsTwoArgsError(Exception):
    """An error that pickles but cannot be unpickled (its __init__ wants two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def getpid() -> int:
    return os.getpid()


def raise_boom(message: str) -> None:
    raise Boom(message)


def raise_unpicklable() -> None:
    raise UnpicklableError


def raise_needs_two_args() -> None:
    raise NeedsTwoArgsError("a", "b")


def call_sys_exit() -> None:
    raise SystemExit(3)


def return_unpicklable() -> threading.Lock:
    return threading.Lock()


def sleep_and_report(seconds: float) -> tuple[int, float, float]:
    """Sleep and return (pid, start, end) wall-clock stamps taken in the child."""
    start = time.time()
    time.sleep(seconds)
    return os.getpid(), start, time.time()


def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_catching_soft_limit(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


def exit_abruptly(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)  # the signal is delivered asynchronously


def sigint_is_ignored() -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def send_notes(count: int) -> str:
    """Send ``count`` notes to the parent, the last from another thread; then try an unpicklable one."""
    for i in range(count - 1):
        notify_parent({"note": i})
    helper = threading.Thread(target=notify_parent, args=({"note": count - 1},))
    helper.start()
    helper.join()
    try:
        notify_parent(threading.Lock())
    except SerializationError:
        return "refused an unpicklable note"
    return "sent an unpicklable note?"
