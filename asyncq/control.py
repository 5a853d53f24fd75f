"""Inspect and control a running cluster: ``app.control`` (Celery's names), replies as dataclasses.

Requests are broadcast over the broker's control channel
(:mod:`asyncq.brokers.control`) and every worker, or those named in ``destination``,
answers; the caller collects the replies until ``timeout``, or until every named worker
answered (with no ``destination``: every live worker the presence records know, on channels
that store them). This module owns the wire format of requests and replies (JSON) and the reply
types; the worker side is :mod:`asyncq.worker.presence`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from asyncq.brokers.control import ControlChannel, control_channel_for
from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = [
    "ActiveTask",
    "Control",
    "ControlReply",
    "Inspect",
    "QueueInfo",
    "ReservedTask",
    "WorkerStats",
    "WorkerStatus",
    "decode_request",
    "encode_reply",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What a worker reports in each heartbeat and in ``inspect().stats()``.

    Attributes:
        hostname: the worker's name (``host:pid`` unless given).
        pid / version / started: its process id, asyncq version and start (epoch seconds).
        host: the machine it runs on.
        processed: tasks finished (any outcome); failed / succeeded / retried break it down.
        in_flight: tasks taken and not yet settled (running, or waiting for a slot).
        concurrency / prefetch: its limits now.
        queues: the queues it consumes.
        load: the host's 1, 5 and 15 minute load averages.
        rss_bytes: the process's resident memory.
        loop_lag: seconds the event loop was late waking the last heartbeat.
        broker_owner: the broker's lease owner id for this worker's messages, when it has one.
        limits: the tasks' rate limits and concurrency keys and their state here:
            ``{"rate_limits": {task: {"rate_limit", "scope", "waiting"}}, "concurrency":
            {task: {"max_concurrency", "key", "running": {key: n}, "waiting": {key: n}}},
            "unique": {task: {"ttl"}}, "fair": {"tasks": {task: {"weights"}}, "active_keys":
            {queue: n}}}`` (docs/flow-control.md).
    """

    hostname: str
    pid: int
    version: str
    started: float
    host: str = ""
    processed: int = 0
    failed: int = 0
    succeeded: int = 0
    retried: int = 0
    in_flight: int = 0
    concurrency: int = 0
    prefetch: int = 0
    queues: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    rss_bytes: int = 0
    loop_lag: float = 0.0
    broker_owner: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def held(self) -> int:
        """Messages this worker holds for their rate limits and concurrency keys."""
        rates = sum(int(r.get("waiting", 0)) for r in self.limits.get("rate_limits", {}).values())
        keys = sum(sum(k.get("waiting", {}).values()) for k in self.limits.get("concurrency", {}).values())
        return rates + int(keys)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as the presence records show it; ``is_lost`` once it missed its heartbeats."""

    hostname: str
    stats: WorkerStats
    seen: float
    expires: float
    is_lost: bool


@dataclass(frozen=True, slots=True)
class ActiveTask:
    """A task a worker runs now; ``runtime`` in seconds so far."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    started: float
    runtime: float
    worker: str


@dataclass(frozen=True, slots=True)
class ReservedTask:
    """A task a worker has taken (prefetched) and not started yet."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    worker: str


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue a worker consumes."""

    name: str


@dataclass(frozen=True, slots=True)
class ControlReply:
    """A worker's answer to a control command: ``ok`` and what it did (or why it could not)."""

    worker: str
    ok: bool
    message: str


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """A reply dataclass from its JSON dict; unknown keys (a newer worker) are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def stats_from_json(data: bytes | dict[str, Any]) -> WorkerStats:
    """Decode a heartbeat's stats."""
    value = json.loads(data) if isinstance(data, bytes) else data
    return _build(WorkerStats, value)


def encode_request(command: str, arguments: dict[str, Any], destination: Sequence[str] | None) -> bytes:
    """The bytes of one control request."""
    body = {"command": command, "arguments": arguments, "destination": list(destination or []) or None}
    return json.dumps(body).encode()


def decode_request(body: bytes) -> tuple[str, dict[str, Any], list[str] | None]:
    """``(command, arguments, destination)`` of a request (ValueError when malformed)."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise ValueError("not a control request")
    return data["command"], dict(data.get("arguments") or {}), data.get("destination")


def encode_reply(worker: str, *, ok: bool = True, result: Any = None, error: str | None = None) -> bytes:
    """The bytes of one worker's reply."""
    return json.dumps({"worker": worker, "ok": ok, "result": result, "error": error}, default=str).encode()


async def _live_workers(channel: ControlChannel, timeout: float) -> int | None:
    """How many replies a broadcast to every worker can stop at: the live presence records.

    None (wait the whole timeout) when the channel gathers presence by broadcasting (asking
    would cost a timeout itself) or knows no live worker. A worker writes its first heartbeat
    before it listens, so the count never leaves out one that could answer.
    """
    if not getattr(channel, "stores_presence", False):
        return None
    current = time.time()
    live = {r.worker for r in await channel.workers(timeout=timeout) if r.expires >= current}
    return len(live) or None


def _decode_replies(raw: list[bytes]) -> list[dict[str, Any]]:
    replies = []
    for body in raw:
        try:
            data = json.loads(body)
        except ValueError:
            continue  # not ours (another version's garbage must not break an inspection)
        if isinstance(data, dict) and isinstance(data.get("worker"), str):
            replies.append(data)
    return replies


class Inspect:
    """Read-only questions to workers: ``app.control.inspect(destination, timeout)``."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float) -> None:
        self._control = control
        self.destination = list(destination) if destination else None
        self.timeout = timeout

    async def _ask(self, command: str) -> dict[str, Any]:
        replies = await self._control.broadcast(
            command, {}, destination=self.destination, timeout=self.timeout
        )
        return {r["worker"]: r.get("result") for r in replies if r.get("ok")}

    async def ping(self) -> dict[str, ControlReply]:
        """``{worker: ControlReply(ok=True, message="pong")}`` for each worker that answered."""
        return await self._control.ping(destination=self.destination, timeout=self.timeout)

    async def active(self) -> dict[str, list[ActiveTask]]:
        """The tasks each worker runs now, with their runtime so far."""
        found = await self._ask("active")
        return {w: [_build(ActiveTask, t) for t in tasks] for w, tasks in found.items()}

    async def reserved(self) -> dict[str, list[ReservedTask]]:
        """The tasks each worker has prefetched and not started."""
        found = await self._ask("reserved")
        return {w: [_build(ReservedTask, t) for t in tasks] for w, tasks in found.items()}

    async def scheduled(self) -> dict[str, list[ReservedTask]]:
        """The tasks each worker holds for a future eta (brokers keep delayed tasks, so usually none)."""
        found = await self._ask("scheduled")
        return {w: [_build(ReservedTask, t) for t in tasks] for w, tasks in found.items()}

    async def registered(self) -> dict[str, list[str]]:
        """The task names each worker knows."""
        return {w: list(names) for w, names in (await self._ask("registered")).items()}

    async def stats(self) -> dict[str, WorkerStats]:
        """Each worker's counters and limits."""
        return {w: stats_from_json(s) for w, s in (await self._ask("stats")).items()}

    async def active_queues(self) -> dict[str, list[QueueInfo]]:
        """The queues each worker consumes."""
        found = await self._ask("active_queues")
        return {w: [QueueInfo(name) for name in names] for w, names in found.items()}

    async def revoked(self) -> dict[str, list[str]]:
        """The revoked task ids each worker holds."""
        return {w: list(ids) for w, ids in (await self._ask("revoked")).items()}


class Control:
    """The cluster's remote control: ``app.control``.

    Every method broadcasts one request and returns the replies keyed by worker; ``destination``
    (worker hostnames) limits who acts and lets the call return as soon as they all answered.
    Without it the call returns once every live worker in the presence records answered, when
    the channel stores presence (``timeout`` stays the upper bound: a lost worker is waited for).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._channels: dict[int, ControlChannel] = {}

    async def channel(self) -> ControlChannel:
        """The connected control channel of this loop's broker."""
        await self.app.connect()
        broker = self.app.broker
        channel = self._channels.get(id(broker))
        if channel is None:
            conf = self.app.conf
            channel = control_channel_for(
                broker, conf.control_url, connect_timeout=conf.broker_connection_timeout
            )
            await channel.connect()
            self._channels = {id(broker): channel}  # one loop's broker at a time is enough
        return channel

    async def aclose(self) -> None:
        """Release the control channel (the app's broker stays open)."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.aclose()

    async def broadcast(
        self,
        command: str,
        arguments: dict[str, Any],
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to the workers; return their raw replies (worker, ok, result, error)."""
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0, got {timeout}")
        channel = await self.channel()
        body = self.app.security.sign_control(encode_request(command, arguments, destination))
        expected = len(set(destination)) if destination else await _live_workers(channel, timeout)
        return _decode_replies(await channel.broadcast(body, timeout=timeout, replies=expected))

    def inspect(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        """An :class:`Inspect` over ``destination`` (every worker when None)."""
        return Inspect(self, destination, timeout)

    async def _command(
        self, command: str, arguments: dict[str, Any], destination: Sequence[str] | None, timeout: float
    ) -> dict[str, ControlReply]:
        replies = await self.broadcast(command, arguments, destination=destination, timeout=timeout)
        return {
            r["worker"]: ControlReply(
                r["worker"], bool(r.get("ok")), str(r.get("result") or r.get("error") or "")
            )
            for r in replies
        }

    async def ping(
        self, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> dict[str, ControlReply]:
        """Ask the workers to answer; ``{worker: ControlReply(ok=True, message="pong")}``."""
        return await self._command("ping", {}, destination, timeout)

    async def workers(self, *, timeout: float = 1.0) -> list[WorkerStatus]:
        """Every worker the presence records know, the lost ones (missed heartbeats) included."""
        channel = await self.channel()
        current = time.time()
        statuses = []
        for record in await channel.workers(timeout=timeout):
            try:
                stats = stats_from_json(record.info)
            except (ValueError, TypeError):
                continue
            statuses.append(
                WorkerStatus(record.worker, stats, record.seen, record.expires, record.expires < current)
            )
        return sorted(statuses, key=lambda s: s.hostname)

    async def revoke(
        self,
        task_id: str | Sequence[str],
        *,
        terminate: bool = False,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        reply: bool = False,
    ) -> dict[str, ControlReply]:
        """Revoke tasks: store the ids (for ``worker_revoke_expires``) and tell the workers.

        A revoked task that has not started is skipped wherever it waits and its state becomes
        REVOKED; with ``terminate`` a running one is stopped too (see docs/monitoring.md for
        what that means per executor). With ``reply``, wait for the workers' answers.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        channel = await self.channel()
        await channel.revoke(ids, expires=float(self.app.conf.worker_revoke_expires))
        arguments = {"ids": ids, "terminate": terminate}
        if not reply:  # Celery's default: tell the workers, do not wait for them
            await channel.broadcast(
                self.app.security.sign_control(encode_request("revoke", arguments, destination)),
                timeout=timeout,
                replies=0,
            )
            return {}
        return await self._command("revoke", arguments, destination, timeout)

    async def rate_limit(
        self,
        task_name: str,
        rate: str | float | None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
    ) -> dict[str, ControlReply]:
        """Set ``task_name``'s rate limit ("10/s", "100/m"; None removes it) on the workers."""
        return await self._command("rate_limit", {"task": task_name, "rate": rate}, destination, timeout)

    async def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
    ) -> dict[str, ControlReply]:
        """Set ``task_name``'s soft and hard time limits (seconds; None removes one) on the workers."""
        return await self._command(
            "time_limit", {"task": task_name, "soft": soft, "hard": hard}, destination, timeout
        )

    async def add_consumer(
        self, queue: str, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> dict[str, ControlReply]:
        """Make the workers consume ``queue`` too."""
        return await self._command("add_consumer", {"queue": queue}, destination, timeout)

    async def cancel_consumer(
        self, queue: str, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> dict[str, ControlReply]:
        """Make the workers stop consuming ``queue`` (tasks taken from it still finish)."""
        return await self._command("cancel_consumer", {"queue": queue}, destination, timeout)

    async def pool_resize(
        self, concurrency: int, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> dict[str, ControlReply]:
        """Set how many tasks the workers run at once."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        return await self._command("pool_resize", {"concurrency": concurrency}, destination, timeout)

    async def shutdown(
        self, *, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> dict[str, ControlReply]:
        """Ask the workers to stop gracefully (in-flight tasks finish within their shutdown timeout)."""
        return await self._command("shutdown", {}, destination, timeout)


def to_json(value: Any) -> Any:
    """A reply object (or a dict/list of them) as plain JSON data, for ``--json`` output."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
