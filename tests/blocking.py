"""The blocking-call detector the async unit tests run under (blockbuster).

tests/unit/conftest.py turns it on for every async test there.

While an async test runs, a call that blocks the event loop's thread (``time.sleep``, file or
socket I/O, ``sqlite3``, a contended ``threading.Lock``) raises ``BlockingError`` when it is made
from asyncq's own code. Calls made in a worker thread (``asyncio.to_thread``, executors) are
not checked: they do not block the loop.

``ALLOWED`` lists what legitimately blocks in the loop, each with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from blockbuster import BlockBuster

#: ``(file suffix, functions in it)`` allowed to block the loop, each with the reason. Any
#: blocking call made (directly or not) from one of these functions passes.
ALLOWED: list[tuple[str, set[str]]] = [
    # An App (and a relative sqlite:// URL) resolves its directory once, when it is made: a
    # path computation (getcwd, lstat), no data read or written; apps are made before serving.
    ("asyncq/app.py", {"_defining_dir", "resolve_sqlite_url"}),
    # Short SQLite calls (a lone publish, a claim, a settle, a result) run on the loop when the
    # connection's thread is idle (_inline): WAL mode, no fsync in a commit (checkpoints stay
    # on the thread), locks fail at once and go to the thread. Page-cache work, cheaper than
    # the thread hop it saves.
    ("asyncq/_sqlite.py", {"parse_sqlite_url", "_inline"}),
    # Starting a process-pool child: fork/exec plus a small pipe write (spawn's preparation
    # data); the child's imports and every later pipe read/write run in the pool's I/O thread.
    ("asyncq/worker/procpool.py", {"__init__"}),
    # The dashboard's task history opens its SQLite file (mkdir, connect, schema) once, when
    # the dashboard starts, before it serves; its queries run in worker threads.
    ("asyncq/dashboard/history.py", {"__init__"}),
    # Building the dashboard's ASGI app checks its static directory exists (one stat), once.
    ("asyncq/dashboard/factory.py", {"create_app"}),
    # ZoneInfo finds and reads a zone's tz file the first time the zone is named (cached
    # afterwards): once per zone when the scheduler starts.
    ("asyncq/beat_entries.py", {"_zone"}),
    # The SQLite drivers' wake-up sockets: a local directory of Unix datagram sockets, made and
    # bound when an instance first listens and unlinked on close; a poke stats the directory
    # (listing it only when its mtime changed) and sends non-blocking datagrams. Metadata on a
    # local directory, by design cheaper than a thread hop per write.
    ("asyncq/_wakeup.py", {"listen", "close", "is_bound", "_listeners", "_send", "_send_pokes"}),
    # Starlette's StaticFiles stats the file it serves in the loop (its code, reached through
    # the dashboard's middleware, which is asyncq's and so checked).
    ("starlette/staticfiles.py", {"get_response", "file_response", "lookup_path"}),
]


@contextmanager
def detector() -> Iterator[BlockBuster]:
    """Activate the detector for calls made from asyncq, with :data:`ALLOWED` allowed."""
    buster = BlockBuster(scanned_modules=["asyncq"])
    for function in buster.functions.values():
        for filename, callers in ALLOWED:
            function.can_block_in(filename, callers)
    buster.activate()
    try:
        yield buster
    finally:
        buster.deactivate()


@pytest.fixture(autouse=True)
def no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run every async test (and its fixtures) under :func:`detector`; sync tests as they are."""
    function = getattr(request, "function", None)
    if function is None or not inspect.iscoroutinefunction(function):
        yield
        return
    with detector():
        yield
