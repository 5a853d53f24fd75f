"""Running a long-lived service (worker, beat) as the main program: event loop choice and signals."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["MAIN_GUARD_HINT", "loop_factory", "refuse_in_spawned_child", "run_until_signalled"]

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
    """Run ``serve()`` in a fresh loop; SIGTERM/SIGINT call ``on_signal``; close the app's drivers after."""

    async def main() -> None:
        running = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            running.add_signal_handler(signum, on_signal, signum)
        try:
            await serve()
        finally:
            for signum in signals:
                with contextlib.suppress(Exception):  # the loop may already be closing
                    running.remove_signal_handler(signum)
            await app.aclose()

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(main())
