"""A small pool of child processes for ``executor="process"`` tasks, with per-call time limits.

:class:`ProcessPool` owns the child processes, the pipe to each child, and the enforcement of
the soft limit (SIGUSR1, raised as :class:`SoftTimeLimitExceeded` inside the function) and the
hard limit (SIGKILL). It exists because :class:`concurrent.futures.ProcessPoolExecutor` cannot
kill one stuck worker without breaking the whole pool; here a killed child is simply replaced.

Each child runs one call at a time. The parent never blocks its event loop: every child has a
dedicated thread that does the blocking pipe I/O and hands replies back with
``loop.call_soon_threadsafe``. EOF on the pipe is how the parent learns a child has died.
While a call runs, the child may send notes (:func:`notify_parent`, e.g. task progress) ahead
of its reply; they reach the call's ``on_notify`` in the parent's loop, in order, before the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from types import FrameType, TracebackType
from typing import Any, Self

from asyncq.exceptions import SerializationError, SoftTimeLimitExceeded, TaskError, TimeLimitExceeded

__all__ = ["ProcessLostError", "ProcessPool", "notify_parent"]

logger = logging.getLogger(__name__)


class ProcessLostError(TaskError):
    """The child process running a call died (exit code or signal) before it replied.

    Attributes:
        exitcode: the child's exit code, negative for the signal that killed it (None if unknown).
        in_call: True if it died running the call, False if it died while starting (so the
            call itself is not to blame).
    """

    def __init__(self, reason: str, exitcode: int | None = None, *, in_call: bool = True) -> None:
        super().__init__(exc_type="WorkerLostError", exc_message=reason)
        self.exitcode = exitcode
        self.in_call = in_call

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_lost, (self.exc_message, self.exitcode, self.in_call))


def _rebuild_lost(reason: str, exitcode: int | None, in_call: bool) -> ProcessLostError:
    return ProcessLostError(reason, exitcode, in_call=in_call)


# A decoded reply: (True, return value) or (False, exception to raise in the parent).
_Reply = tuple[bool, Any]
_ReplyFuture = asyncio.Future[_Reply | None]  # None: the child died mid-call
_Context = SpawnContext | ForkServerContext | ForkContext
# How long to wait for a killed child to be reaped. SIGKILL cannot be ignored, but a child stuck
# in uninterruptible I/O, or whose pipe a grandchild inherited, must not hang the pool forever.
_REAP_TIMEOUT = 5.0
# Exceptions that would stop or confuse the parent's event loop if re-raised there verbatim.
_LOOP_CONTROL = (SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)

_in_call = False  # child side: True only while the user function runs
_parent: Connection | None = None  # child side: the pipe to the parent
_send_lock = threading.Lock()  # child side: a note sent from a thread the function started
# A note frame starts with this byte; a reply is a bare pickle, which starts with b"\x80".
_NOTE = b"N"
_OnNotify = Callable[[Any], None]
_Job = tuple[bytes, _ReplyFuture, _OnNotify | None]  # payload, reply future, notes callback


def _qualname(obj: object) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    name = getattr(obj, "__qualname__", None) or kind.__qualname__
    return f"{getattr(obj, '__module__', None) or kind.__module__}.{name}"


# --- child side ---------------------------------------------------------------------------------


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    # A late signal (the call just finished) must not blow up the child's own loop.
    if _in_call:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _init_child() -> None:
    # The parent owns Ctrl-C and shutdown; a terminal SIGINT must not kill calls mid-flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_soft_limit)


def _dump_error(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the error itself
        message = repr(exc)
    try:
        exc_bytes: bytes | None = pickle.dumps(exc)
    except Exception:  # pickling can fail in many ways; the parent falls back to TaskError
        exc_bytes = None
    return pickle.dumps((False, (exc_bytes, _qualname(type(exc)), message, tb)))


def _execute(payload: bytes) -> bytes:
    global _in_call
    try:
        fn, args, kwargs = pickle.loads(payload)  # noqa: S301 - bytes from our own parent process
    except Exception as exc:  # e.g. fn not importable in the child; report, do not die
        return _dump_error(SerializationError(f"the worker process could not unpickle the call: {exc!r}"))
    try:
        _in_call = True
        try:
            result = fn(*args, **kwargs)
        finally:
            _in_call = False
    except BaseException as exc:  # every failure goes back to the parent, which decides
        return _dump_error(exc)
    try:
        return pickle.dumps((True, result))
    except Exception as exc:  # any pickling failure is a SerializationError
        message = f"result of type {_qualname(type(result))} cannot be pickled: {exc}"
        return _dump_error(SerializationError(message))


def notify_parent(note: object) -> None:
    """Child side: send ``note`` to the running call's ``on_notify`` in the parent, before its reply.

    Raises:
        RuntimeError: not inside a ProcessPool call.
        SerializationError: ``note`` cannot be pickled.
    """
    conn = _parent
    if conn is None or not _in_call:
        raise RuntimeError("notify_parent() works only inside a call run by a ProcessPool")
    try:
        data = _NOTE + pickle.dumps(note)
    except Exception as exc:  # any pickling failure is a SerializationError
        raise SerializationError(f"cannot pickle a note to the worker: {exc}") from exc
    # The soft limit's signal must not cut a frame in half: the pipe would be out of step.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        with _send_lock:
            conn.send_bytes(data)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def _child_main(conn: Connection) -> None:
    global _parent
    _init_child()
    _parent = conn
    # The hello tells the parent the signal handlers are installed: time limits start after it,
    # so a slow spawn is never charged to a call, and an early SIGUSR1 cannot kill the child.
    try:
        conn.send_bytes(b"")
    except OSError:
        return  # the parent died while this child started (e.g. killed by a poison message)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent went away
        conn.send_bytes(_execute(payload))


# --- parent side --------------------------------------------------------------------------------


def _decode_reply(data: bytes) -> _Reply:
    try:
        ok, body = pickle.loads(data)  # noqa: S301 - bytes from our own child process
    except Exception as exc:  # any unpickling failure is a SerializationError
        return False, SerializationError(f"could not unpickle the reply of the worker process: {exc!r}")
    if ok:
        return True, body
    exc_bytes, exc_type, message, tb = body
    try:
        error = pickle.loads(exc_bytes) if exc_bytes is not None else None  # noqa: S301 - as above
    except Exception:  # many exception types pickle fine but cannot be rebuilt
        error = None
    if not isinstance(error, BaseException) or isinstance(error, _LOOP_CONTROL):
        error = TaskError(exc_type=exc_type, exc_message=message, remote_traceback=tb)
    error.remote_traceback = tb  # type: ignore[attr-defined]  # the documented extra attribute
    return False, error


def _resolve(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():  # the caller may have given up (hard limit, cancellation)
        fut.set_result(value)


class _Child:
    """One child process plus the thread that does its blocking pipe I/O."""

    def __init__(self, ctx: _Context, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # (payload, future for the reply, notes callback), or None to stop the I/O thread.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self._conn, child_conn = ctx.Pipe()
        # daemon: multiprocessing kills the children at interpreter exit if aclose() was never called.
        self.process = ctx.Process(target=_child_main, args=(child_conn,), name="asyncq-proc", daemon=True)
        # Cheap even with spawn (fork_exec plus a small write); the child's imports run on its own time.
        self.process.start()
        # Drop our copy of the child's end so that EOF on self._conn means the child is gone.
        child_conn.close()
        thread_name = f"asyncq-procpool-io-{self.process.pid}"
        threading.Thread(target=self._serve, name=thread_name, daemon=True).start()

    def submit(self, payload: bytes, fut: _ReplyFuture, on_notify: _OnNotify | None = None) -> None:
        self._jobs.put((payload, fut, on_notify))

    def soft_interrupt(self) -> None:
        if self.process.exitcode is None and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited on its own
                os.kill(self.process.pid, signal.SIGUSR1)

    def stop(self) -> None:
        self.process.kill()
        self._jobs.put(None)  # wakes the thread if the child was idle

    def exit_reason(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"worker process {self.process.pid} was killed by {signal.Signals(-code).name}"
        return f"worker process {self.process.pid} exited unexpectedly with exit code {code}"

    def _post(self, fut: asyncio.Future[Any], value: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(_resolve, fut, value)

    def _note(self, on_notify: _OnNotify | None, data: bytes) -> None:
        if on_notify is None:
            return
        try:
            note = pickle.loads(data[1:])  # noqa: S301 - bytes from our own child process
        except Exception:  # a note is advisory: losing one must not fail the call
            logger.warning("unreadable note from worker process %s", self.process.pid, exc_info=True)
            return
        # Posted like the reply, so every note is handled before the reply resolves the call.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(on_notify, note)

    def _serve(self) -> None:
        try:
            try:
                alive = self._conn.recv_bytes() == b""
            except (EOFError, OSError):
                alive = False
            self._post(self.ready, alive)
            while alive and (job := self._jobs.get()) is not None:
                payload, fut, on_notify = job
                try:
                    self._conn.send_bytes(payload)
                    data = self._conn.recv_bytes()
                    while data[:1] == _NOTE:
                        self._note(on_notify, data)
                        data = self._conn.recv_bytes()
                    reply: _Reply | None = _decode_reply(data)
                except (EOFError, OSError):
                    # The child died mid-call. Reap it before answering so its exit code is known.
                    reply, alive = None, False
                    self.process.join()
                self._post(fut, reply)
        finally:
            self.process.kill()
            self.process.join()
            self._conn.close()
            self._post(self.exited, None)


def _main_guard_hint() -> str:
    """A hint for a child that died while starting, when the parent runs a script (see runner.py)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        return ""  # run with -m or interactively: the child does not re-run a script
    from asyncq.runner import MAIN_GUARD_HINT

    return f" (if it printed an error about the main module: {MAIN_GUARD_HINT})"


class ProcessPool:
    """Run picklable sync callables in up to ``size`` lazily started child processes."""

    def __init__(self, size: int = 1, mp_context: str | _Context = "spawn") -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        # spawn by default: the parent runs an event loop and threads, which fork does not copy safely.
        ctx = multiprocessing.get_context(mp_context) if isinstance(mp_context, str) else mp_context
        if not isinstance(ctx, SpawnContext | ForkServerContext | ForkContext):
            raise TypeError(f"unsupported multiprocessing context: {mp_context!r}")
        self._ctx: _Context = ctx
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._closed = False

    @property
    def alive_count(self) -> int:
        return sum(1 for child in self._children if child.process.is_alive())

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        on_notify: _OnNotify | None = None,
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` in a child process and return its result.

        ``on_notify`` is called in this loop with each note the call sends (:func:`notify_parent`).
        """
        try:
            payload = pickle.dumps((fn, args, kwargs or {}))
        except Exception as exc:
            raise SerializationError(f"cannot pickle the call to {_qualname(fn)}: {exc}") from exc
        async with self._slots:
            child = await self._checkout()
            healthy = False
            try:
                loop = asyncio.get_running_loop()
                fut: _ReplyFuture = loop.create_future()
                child.submit(payload, fut, on_notify)
                soft = None
                if soft_time_limit is not None:
                    soft = loop.call_later(soft_time_limit, child.soft_interrupt)
                try:
                    # asyncio.wait, unlike wait_for, leaves fut alone on timeout and on cancellation.
                    done, _ = await asyncio.wait({fut}, timeout=time_limit)
                finally:
                    if soft is not None:
                        soft.cancel()
                if not done:
                    raise TimeLimitExceeded(f"{_qualname(fn)} exceeded its time limit of {time_limit}s")
                reply = fut.result()
                if reply is None:
                    raise ProcessLostError(child.exit_reason(), child.process.exitcode)
                healthy = True
            finally:
                # Any other way out (hard limit, lost child, cancellation) leaves a child that is dead
                # or still running the call: kill it; the next call spawns a fresh one.
                if healthy and not self._closed:
                    self._idle.append(child)
                else:
                    await self._discard(child)
        ok, value = reply
        if ok:
            return value
        raise value

    async def _checkout(self) -> _Child:
        if self._closed:
            raise RuntimeError("ProcessPool is closed")
        while self._idle:
            child = self._idle.pop()
            if child.process.is_alive():
                return child
            await self._discard(child)  # died while idle (e.g. OOM killer)
        child = _Child(self._ctx, asyncio.get_running_loop())
        self._children.add(child)
        try:
            ready = await child.ready
        except BaseException:
            await self._discard(child)
            raise
        if not ready:
            await self._discard(child)
            hint = _main_guard_hint()
            raise ProcessLostError(
                f"{child.exit_reason()} while starting{hint}", child.process.exitcode, in_call=False
            )
        return child

    async def _discard(self, *children: _Child) -> None:
        try:
            for child in children:
                child.stop()
            # Wait for the reaping so that callers see the process gone once this returns.
            await asyncio.wait([child.exited for child in children], timeout=_REAP_TIMEOUT)
        finally:
            self._children.difference_update(children)

    async def aclose(self) -> None:
        """Kill every child process and wait for them to be reaped. Idempotent."""
        self._closed = True
        self._idle.clear()
        if self._children:
            await self._discard(*self._children)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
