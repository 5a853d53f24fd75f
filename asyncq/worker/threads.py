"""The thread pool of sync tasks: a fixed capacity that a stuck thread cannot shrink.

A thread cannot be killed. When a sync task passes its hard time limit, the executor gives up
on it (raising an exception into the thread, which only lands at the thread's next Python
bytecode) and calls :meth:`ThreadPool.abandon`: a fresh thread takes the stuck one's place at
once, so the pool keeps ``size`` threads for everyone; the abandoned thread exits when its
call finally returns. :class:`concurrent.futures.ThreadPoolExecutor` cannot do this, which
is why this module exists.

Threads are daemons: a thread stuck in C code must not keep the worker process alive at exit.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

__all__ = ["ThreadPool"]

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"]


class ThreadPool(Executor):
    """Run sync callables in up to ``size`` lazily started threads; replace abandoned ones."""

    def __init__(self, size: int, thread_name_prefix: str = "asyncq-task") -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._prefix = thread_name_prefix
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._serving = 0  # threads counting towards size (not abandoned, not stopping)
        self._idle = 0
        self._abandoned: set[int] = set()
        self._names = itertools.count()
        self._closed = False

    @property
    def thread_count(self) -> int:
        """Threads counting towards ``size`` (abandoned ones excluded)."""
        return self._serving

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return its future."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._jobs.put((functools.partial(fn, *args, **kwargs), future))
            if self._idle == 0 and self._serving < self.size:
                self._start_thread()
        return future

    def abandon(self, ident: int) -> None:
        """Stop counting the thread ``ident`` (stuck in a call) and start its replacement."""
        with self._lock:
            if ident in self._abandoned or self._closed:
                return
            self._abandoned.add(ident)
            self._serving -= 1
            self._start_thread()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current call ends; ``wait`` is ignored (stuck threads)."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[1].cancel()
            for _ in range(self._serving):
                self._jobs.put(None)

    def _start_thread(self) -> None:  # called with the lock held
        self._serving += 1
        name = f"{self._prefix}_{next(self._names)}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # the caller decides; the thread lives on
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                if me in self._abandoned:  # its replacement is already serving
                    self._abandoned.discard(me)
                    return
