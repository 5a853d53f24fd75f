"""Worker processes of ``compare_redis.py`` and ``compare_cpu.py``: own process groups, always stopped."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent

_live: set[subprocess.Popen[bytes]] = set()


def log(message: str) -> None:
    print(message, flush=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGKILL if this script dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group (taskiq's supervisor has a child), then SIGKILL after ``grace``."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also any child left behind by the leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    finally:
        _live.discard(proc)


class WorkerProcess:
    """One framework worker: its own process group, output to a log file, always stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with self.log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv,
                cwd=HERE,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        _live.add(self.proc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with status {self.proc.returncode}\n{self.tail()}")

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join("    | " + line for line in self.text().splitlines()[-lines:])


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """SIGTERM -> KeyboardInterrupt (so ``finally`` blocks stop workers); kill leftovers at exit."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for proc in list(_live):
            stop_process(proc, grace=2)
        signal.signal(signal.SIGTERM, previous)
