"""A worker's presence and remote control: heartbeats, answers to inspect / control, revocations.

One :class:`Presence` per worker, started by :meth:`Worker.serve`. It writes a heartbeat
(:class:`~asyncq.control.WorkerStats` as JSON) every ``worker_heartbeat_interval`` seconds,
with a time to live of ``worker_heartbeat_misses`` intervals, answers the requests broadcast
over the broker's control channel, and keeps the revoked task ids in memory (loaded from the
channel at start, then learnt from ``revoke`` requests), so the per-task check costs no round
trip. A failing channel never stops the worker: the loops log and try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from asyncq.__about__ import __version__
from asyncq.brokers.control import (
    ControlChannel,
    ControlRequest,
    LeaseHolder,
    LeaseReclaimer,
    control_channel_for,
)
from asyncq.brokers.memory_control import MemoryControlChannel
from asyncq.config import heartbeat_interval
from asyncq.control import WorkerStats, decode_request, encode_reply, stats_from_json
from asyncq.exceptions import AsyncqError, ConfigurationError, SerializationError, SignatureError
from asyncq.message import decode_message
from asyncq.task import parse_rate_limit

if TYPE_CHECKING:
    from asyncq.worker.job import JobRunner
    from asyncq.worker.worker import Worker

__all__ = ["Presence"]

logger = logging.getLogger(__name__)

#: Seconds between attempts after the control channel failed.
RETRY_DELAY = 1.0


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Presence:
    """Heartbeats, control requests and the revoked set of one worker."""

    def __init__(self, worker: Worker, runner: JobRunner) -> None:
        conf = worker.app.conf
        self.worker = worker
        self.runner = runner
        self.interval = heartbeat_interval(conf)
        self.misses = int(conf.worker_heartbeat_misses)
        if self.interval <= 0 or self.misses < 1:
            raise ConfigurationError("worker_heartbeat_interval must be > 0 and worker_heartbeat_misses >= 1")
        self.revoke_expires = float(conf.worker_revoke_expires)
        self.started = time.time()
        self.loop_lag = 0.0
        self.revoked: dict[str, float] = {}
        self.fair_keys: dict[str, int] = {}  # queue -> tenants waiting their turn, at the last beat
        try:
            self.channel: ControlChannel = control_channel_for(
                worker.app.broker, conf.control_url, connect_timeout=conf.broker_connection_timeout
            )
        except ConfigurationError as exc:  # a third-party broker without one: this process only
            logger.warning("%s; presence and control work within this process only", exc)
            self.channel = MemoryControlChannel(worker.app.broker)
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda _: "pong",
            "stats": lambda _: asdict(self.stats()),
            "active": self._active,
            "reserved": self._reserved,
            "scheduled": lambda _: [],  # delayed tasks wait in the broker, not in a worker
            "registered": lambda _: sorted(worker.app.tasks),
            "active_queues": lambda _: list(worker.queues),
            "revoked": lambda _: sorted(self._live_revoked()),
            "revoke": self._revoke,
            "rate_limit": self._rate_limit,
            "time_limit": self._time_limit,
            "add_consumer": self._add_consumer,
            "cancel_consumer": self._cancel_consumer,
            "pool_resize": self._pool_resize,
            "shutdown": self._shutdown,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the channel, load the stored revocations and write the first heartbeat."""
        try:
            async with asyncio.timeout(max(10.0, self.interval)):
                await self.channel.connect()
                self.revoked.update(await self.channel.revoked())
                await self._beat()
        except Exception as exc:  # the heartbeat loop keeps trying
            logger.warning("control channel of %s unavailable at start: %r", self.worker.hostname, exc)

    async def serve(self) -> None:
        """Heartbeat and answer requests until cancelled."""
        listener = asyncio.create_task(self._listen_forever(), name="asyncq.control")
        try:
            await self._heartbeat_forever()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def aclose(self) -> None:
        """Remove the presence record (a clean exit is not a lost worker) and close the channel."""
        try:
            async with asyncio.timeout(5.0):
                await self.channel.leave(self.worker.hostname)
        except Exception as exc:  # a failing channel must not fail the worker
            logger.warning("could not remove the presence record of %s: %s", self.worker.hostname, exc)
        await self.channel.aclose()

    def is_revoked(self, task_id: str) -> bool:
        """Whether ``task_id`` is revoked (an in-memory check)."""
        until = self.revoked.get(task_id)
        return until is not None and until > time.time()

    def _live_revoked(self) -> list[str]:
        current = time.time()
        self.revoked = {task_id: until for task_id, until in self.revoked.items() if until > current}
        return list(self.revoked)

    # -- heartbeats -----------------------------------------------------------------------------

    def stats(self) -> WorkerStats:
        """This worker's counters and limits now."""
        worker = self.worker
        counts = worker.stats
        return WorkerStats(
            hostname=worker.hostname,
            pid=os.getpid(),
            version=__version__,
            started=self.started,
            host=socket.gethostname(),
            processed=counts["success"] + counts["failure"] + counts["retry"],
            failed=counts["failure"],
            succeeded=counts["success"],
            retried=counts["retry"],
            in_flight=worker.in_flight + (worker.waiting is not None),
            concurrency=worker.concurrency,
            prefetch=worker.prefetch,
            queues=list(worker.queues),
            load=list(os.getloadavg()),
            rss_bytes=_rss_bytes(),
            loop_lag=round(self.loop_lag, 6),
            broker_owner=getattr(worker.app.broker, "_owner", None),
            limits={**self.runner.flow.snapshot(worker.app.tasks), **self._queue_limits()},
        )

    def _queue_limits(self) -> dict[str, Any]:
        """The unique and fair tasks' declarations, and the fair keys waiting at the last beat."""
        tasks = self.worker.app.tasks
        limits: dict[str, Any] = {}
        unique = {name: {"ttl": t.unique.ttl} for name, t in tasks.items() if t.unique is not None}
        if unique:
            limits["unique"] = unique
        fair = {name: {"weights": dict(t.fair.weights)} for name, t in tasks.items() if t.fair is not None}
        if fair:
            limits["fair"] = {"tasks": fair, "active_keys": dict(self.fair_keys)}
        return limits

    async def _count_fair_keys(self) -> None:
        broker, tasks = self.worker.app.broker, self.worker.app.tasks.values()
        if not broker.capabilities.fair_queuing or all(t.fair is None for t in tasks):
            return
        self.fair_keys = {queue: await broker.active_fair_keys(queue) for queue in self.worker.queues}

    async def _beat(self) -> None:
        try:
            async with asyncio.timeout(max(5.0, self.interval)):
                await self._count_fair_keys()
        except (AsyncqError, TimeoutError) as exc:  # stats go out without the fresh count
            logger.debug("could not count the fair keys of %s: %r", self.worker.hostname, exc)
        info = _json(asdict(self.stats()))
        async with asyncio.timeout(max(5.0, self.interval)):
            await self.channel.beat(self.worker.hostname, info, ttl=self.interval * self.misses)

    async def _heartbeat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.loop_lag = max(0.0, loop.time() - planned)
            try:
                await self._beat()
                if isinstance(self.channel, LeaseReclaimer):
                    await self._reclaim(self.channel)
            except Exception as exc:  # presence must never stop the worker: next beat retries
                logger.warning("heartbeat of %s failed: %r", self.worker.hostname, exc)

    async def _reclaim(self, reclaimer: LeaseReclaimer) -> None:
        """Hand the messages of dead workers back now, not after their visibility timeout."""
        current = time.time()
        holders = []
        async with asyncio.timeout(max(5.0, self.interval)):
            records = await self.channel.workers(timeout=self.interval / 2)
        for record in records:
            if record.worker == self.worker.hostname:
                continue
            try:
                stats = stats_from_json(record.info)
            except (ValueError, TypeError):
                continue
            if stats.broker_owner:
                lost = record.expires < current
                holders.append(
                    LeaseHolder(
                        record.worker, stats.broker_owner, stats.host, stats.pid, lost, tuple(stats.queues)
                    )
                )
        if not holders:
            return
        async with asyncio.timeout(max(5.0, self.interval)):
            released = await reclaimer.release_dead(holders)
        for worker, count in released.items():
            logger.warning("worker %s is dead: %d of its messages handed back at once", worker, count)

    # -- control requests -------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with aclosing(self.channel.listen(self.worker.hostname)) as requests:  # type: ignore[type-var]
                    async for request in requests:
                        await self._answer(request)
            except Exception as exc:  # presence must never stop the worker: listen again
                logger.warning(
                    "control channel of %s failed (%r); listening again", self.worker.hostname, exc
                )
                await asyncio.sleep(RETRY_DELAY)

    async def _answer(self, request: ControlRequest) -> None:
        try:
            body = self.worker.app.security.open_control(request.body)
            command, arguments, destination = decode_request(body)
        except SignatureError as exc:  # with signing on, a forged revoke or shutdown does nothing
            logger.warning("ignoring a control request: %s", exc)
            return
        except ValueError:
            logger.debug("ignoring a malformed control request")
            return
        hostname = self.worker.hostname
        if destination is not None and hostname not in destination:
            return
        handler = self._handlers.get(command)
        if handler is None:
            reply = encode_reply(hostname, ok=False, error=f"unknown control command {command!r}")
        else:
            try:
                reply = encode_reply(hostname, result=handler(arguments))
            except Exception as exc:  # a bad argument must not stop the listener: tell the caller
                reply = encode_reply(hostname, ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            async with asyncio.timeout(5.0):
                await request.reply(reply)
        except Exception as exc:  # a failing channel must not fail the worker
            logger.warning("could not answer control command %s: %s", command, exc)

    def _active(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        current = time.time()
        return [
            {
                "id": e.message.id,
                "name": e.message.task,
                "args": e.message.args,
                "kwargs": e.message.kwargs,
                "queue": e.queue,
                "started": e.started,
                "runtime": round(current - (e.started or current), 6),
                "worker": self.worker.hostname,
            }
            for e in self.runner.book.running()
        ]

    def _reserved(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        held = [(e.message, e.queue) for e in self.runner.book.reserved()]
        waiting = self.worker.waiting
        if waiting is not None:
            with contextlib.suppress(SerializationError):  # dead-lettered when its turn comes
                held.append((decode_message(waiting.body, self.worker.app.serializers), waiting.queue))
        return [
            {
                "id": message.id,
                "name": message.task,
                "args": message.args,
                "kwargs": message.kwargs,
                "queue": queue,
                "worker": self.worker.hostname,
            }
            for message, queue in held
        ]

    def _revoke(self, arguments: dict[str, Any]) -> str:
        ids = [str(i) for i in arguments.get("ids") or []]
        until = time.time() + self.revoke_expires
        terminated = []
        for task_id in ids:
            self.revoked[task_id] = until
            entry = self.runner.book.entries.get(task_id)
            if arguments.get("terminate") and entry is not None and entry.started is not None:
                if entry.request is not None:
                    entry.request.revoked = True  # a thread task sees it through is_revoked()
                if self.worker.cancel_job(task_id):
                    terminated.append(task_id)
        return f"revoked {len(ids)}, terminated {len(terminated)}"

    def _task(self, name: Any) -> Any:
        task = self.worker.app.tasks.get(str(name))
        if task is None:
            raise ValueError(f"unknown task {name!r}")
        return task

    def _rate_limit(self, arguments: dict[str, Any]) -> str:
        task = self._task(arguments.get("task"))
        rate = arguments.get("rate")
        task.rate = parse_rate_limit(rate)
        task.options = replace(task.options, rate_limit=rate)
        self.runner.flow.reset_rate(task.name)  # the next start builds a bucket at the new rate
        return f"rate limit of {task.name} set to {rate}"

    def _time_limit(self, arguments: dict[str, Any]) -> str:
        task = self._task(arguments.get("task"))
        soft, hard = arguments.get("soft"), arguments.get("hard")
        for value in (soft, hard):
            if value is not None and not float(value) > 0:
                raise ValueError(f"time limits must be > 0 seconds, got {value!r}")
        task.options = replace(
            task.options,
            soft_time_limit=None if soft is None else float(soft),
            time_limit=None if hard is None else float(hard),
        )
        return f"time limits of {task.name} set to soft={soft} hard={hard}"

    def _add_consumer(self, arguments: dict[str, Any]) -> str:
        queue = str(arguments.get("queue") or "")
        if not queue:
            raise ValueError("add_consumer needs a queue name")
        if queue in self.worker.queues:
            return f"already consuming {queue}"
        self.worker.set_queues([*self.worker.queues, queue])
        return f"consuming {queue}"

    def _cancel_consumer(self, arguments: dict[str, Any]) -> str:
        queue = str(arguments.get("queue") or "")
        if queue not in self.worker.queues:
            return f"not consuming {queue}"
        if len(self.worker.queues) == 1:
            raise ValueError(f"{queue} is the only queue consumed; stop the worker instead")
        self.worker.set_queues([q for q in self.worker.queues if q != queue])
        return f"no longer consuming {queue}"

    def _pool_resize(self, arguments: dict[str, Any]) -> str:
        concurrency = int(arguments.get("concurrency") or 0)
        self.worker.resize(concurrency)
        return f"concurrency set to {concurrency}"

    def _shutdown(self, _: dict[str, Any]) -> str:
        # After the reply is sent: stopping cancels this listener.
        asyncio.get_running_loop().call_later(0.2, self.worker.stop)
        return "shutting down"


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value, default=str).encode()
