"""``asyncq run --reload``: restart the worker when the code changes, in-flight tasks first.

The reloading process imports no user code: it runs the worker as a child process (the same
command without ``--reload``) and watches the directories for changed ``.py`` files
(watchfiles). On a change it sends the child SIGTERM, so the worker stops fetching and lets
its in-flight tasks finish within its shutdown timeout, waits for it to exit, and starts a new
one. SIGTERM/SIGINT are passed on to the child (a second one stops it at once, as always). A
child that fails, e.g. on a syntax error just saved, is started again on the next change; one
that exits cleanly (``asyncq control ... shutdown``) ends the reloader too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from asyncq.exceptions import MissingDependencyError

__all__ = ["RELOAD_ENV", "child_argv", "supervise"]

logger = logging.getLogger(__name__)

#: The environment variable of ``--reload``; never passed on to the child, which must not reload.
RELOAD_ENV = "ASYNCQ_RELOAD"
#: Milliseconds between checks of the child while no file changes.
_WATCH_TICK_MS = 500


def child_argv(argv: Sequence[str]) -> list[str]:
    """The worker's command line: ``argv`` (the arguments after ``asyncq``) without ``--reload``."""
    return [sys.executable, "-m", "asyncq", *(arg for arg in argv if arg != "--reload")]


def supervise(command: Sequence[str], paths: Sequence[Path]) -> int:
    """Run ``command`` and start it again whenever a ``.py`` file under ``paths`` changes.

    Returns the exit status to leave with: the last child's, once a signal or a clean exit
    of the child ended the loop.
    """
    try:
        from watchfiles import PythonFilter, watch
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "--reload needs the watchfiles package: pip install 'asyncq[reload]'"
        ) from exc
    env = {k: v for k, v in os.environ.items() if k != RELOAD_ENV}
    stopping = threading.Event()
    child = _start(command, env)

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    waiting_for_change = False
    for changes in watch(
        *paths,
        watch_filter=PythonFilter(),
        stop_event=stopping,
        yield_on_timeout=True,
        rust_timeout=_WATCH_TICK_MS,
        raise_interrupt=False,
    ):
        if stopping.is_set():
            break
        status = child.poll()
        if status is not None and not changes and not waiting_for_change:
            if status == 0:
                return 0
            logger.error("the worker exited with status %d; waiting for a change to start it again", status)
            waiting_for_change = True
        if changes:
            changed = sorted({Path(path).name for _, path in changes})
            logger.warning(
                "%s changed: restarting the worker (in-flight tasks finish first)", ", ".join(changed)
            )
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.wait()
            child = _start(command, env)
            waiting_for_change = False
    return child.wait()


def _start(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # This interpreter and asyncq's own arguments, as the user typed them: nothing from outside.
    return subprocess.Popen(list(command), env=env)  # noqa: S603
