"""The span of a run whose tasks run in several processes (``benchmarks/compare_cpu.py``).

``peers._common`` keeps its counter in the worker process, which is right for one process
but not for a prefork pool or a process executor, where every child would count alone. Here
each task, when it ends, sends its own start and end to Redis in one script call: the earliest
start and the latest end are kept (ZADD LT / GT) and a counter is incremented. The driver waits
for the counter to reach the target and reads both. One round trip per task, the same for
every framework (a sync client in threads and child processes, an asyncio one on an event
loop); with tasks of 10 ms and more it is a few percent at most of the work measured.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

#: zset holding the members "first" (earliest start) and "last" (latest end); the counter.
SPAN_ZSET, COUNT_KEY = "bench:cpuspan", "bench:cpucount"
_RECORD = """
redis.call('ZADD', KEYS[1], 'LT', ARGV[1], 'first')
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], 'last')
return redis.call('INCR', KEYS[2])
"""
_clients: dict[int, Any] = {}  # pid -> client: a forked child must not share its parent's sockets
_lock = threading.Lock()


def loops() -> int:
    """Iterations of :func:`burn`, chosen by the driver (``BENCH_CPU_LOOPS``) for every framework."""
    return int(os.environ.get("BENCH_CPU_LOOPS", "200000"))


def burn(n: int) -> int:
    """The CPU-bound work: a pure-Python loop (holds the GIL throughout)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _script(client: Any) -> Any:
    return client.register_script(_RECORD)


def record(start: float) -> None:
    """Call last thing in a sync task with the ``time.time()`` taken first thing."""
    end = time.time()
    pid = os.getpid()
    entry = _clients.get(pid)
    if entry is None:
        import redis

        with _lock:  # one client per process, even when a thousand threads end at once
            entry = _clients.get(pid)
            if entry is None:
                # Blocking pool: a thread waits for one of 50 connections (the default pool
                # raises MaxConnectionsError when many threads call at once).
                pool = redis.BlockingConnectionPool.from_url(
                    os.environ["BENCH_SPAN_URL"], max_connections=50, timeout=60
                )
                client = redis.Redis(connection_pool=pool)
                entry = _clients[pid] = (client, _script(client))
    entry[1](keys=[SPAN_ZSET, COUNT_KEY], args=[repr(start), repr(end)])


async def record_async(start: float) -> None:
    """The same from a coroutine: an asyncio client, so the event loop is never blocked."""
    end = time.time()
    key = -os.getpid()  # apart from the sync client of the same process
    entry = _clients.get(key)
    if entry is None:
        import redis.asyncio

        # Blocking, as above: a thousand tasks ending at once wait for one of 50 connections.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            os.environ["BENCH_SPAN_URL"], max_connections=50, timeout=60
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        entry = _clients[key] = (client, _script(client))
    await entry[1](keys=[SPAN_ZSET, COUNT_KEY], args=[repr(start), repr(end)])
