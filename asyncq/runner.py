"""Running a long-lived service (worker, beat) as the main program: event loop choice and signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "CLOSE_TIMEOUT",
    "FORCED_EXIT_GRACE",
    "MAIN_GUARD_HINT",
    "loop_factory",
    "refuse_in_spawned_child",
    "run_until_signalled",
]

logger = logging.getLogger(__name__)

#: Seconds the process may take to leave after the second signal before it exits at once.
FORCED_EXIT_GRACE = 3.0
#: Seconds closing the app's drivers may take when the service stops.
CLOSE_TIMEOUT = 10.0

#: How to fix a worker started at import time of a script whose process pool uses spawn.
MAIN_GUARD_HINT = (
    'a script that starts a worker must do so under `if __name__ == "__main__":`, because the '
    "process executor's children (start method spawn) import the script again"
)


def refuse_in_spawned_child() -> None:
    """Fail if called while a spawned child process is importing the parent's main script.

    Without this, a script that starts a worker unguarded would start one more worker in
    every process-pool child, each consuming tasks, instead of running the call it was made for.
    """
    # multiprocessing's own flag for "this child is still bootstrapping" (spawn and forkserver).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigurationError(
            f"a worker was started while a process-pool child imported the main module: {MAIN_GUARD_HINT}"
        )


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--loop auto|asyncio|uvloop`` (None: asyncio's default)."""
    if loop not in {"auto", "asyncio", "uvloop"}:
        raise ConfigurationError(f"unknown event loop {loop!r}; choose auto, asyncio or uvloop")
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigurationError("uvloop is not installed; pip install 'asyncq[uvloop]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_until_signalled(
    app: App, serve: Callable[[], Awaitable[None]], on_signal: Callable[[int], None], *, loop: str
) -> None:
    """Run ``serve()`` in a fresh loop; SIGTERM/SIGINT call ``on_signal``; close the app's drivers after.

    The second signal also cancels ``serve()`` wherever it waits (a connect, a drain, a
    close), and if the process has not left within :data:`FORCED_EXIT_GRACE` seconds (a
    sync task stuck in a thread cannot be cancelled), it exits at once with status 1.
    """

    async def main() -> None:
        running = asyncio.get_running_loop()
        serving = asyncio.current_task()
        assert serving is not None
        received = 0

        def handle(signum: int) -> None:
            nonlocal received
            received += 1
            on_signal(signum)
            if received == 2:
                serving.cancel()
                # A thread, not a loop timer: what blocks the exit (a sync task's thread that
                # the interpreter joins on the way out) can outlive the loop.
                watchdog = threading.Timer(FORCED_EXIT_GRACE, _exit_now, (signum,))
                watchdog.daemon = True
                watchdog.start()

        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            running.add_signal_handler(signum, handle, signum)
        try:
            await serve()
        except asyncio.CancelledError:
            if received < 2:
                raise
        finally:
            try:
                # Bounded: a driver that cannot close (its server gone) must not hold the exit.
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await app.aclose()
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("closing the broker and backend took over %.0fs; leaving them", CLOSE_TIMEOUT)
            finally:
                for signum in signals:
                    with contextlib.suppress(Exception):  # the loop may already be closing
                        running.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(main())


def _exit_now(signum: int) -> None:
    logger.error(
        "%s received twice and still not stopped after %.0fs: exiting now",
        signal.Signals(signum).name,
        FORCED_EXIT_GRACE,
    )
    logging.shutdown()
    os._exit(1)
