"""Runs Celery protocol-v2 messages from Celery's queues (Redis or RabbitMQ) in an asyncq worker.

The worker starts one :class:`CeleryConsumer` beside its own consumer when
``celery_queues`` is set. It shares the worker's concurrency slots and executor, so a Celery
message runs exactly like a native one (async, thread or process task; time limits; bound
``self.request``), and writes every state to Celery's result keys, where a Celery
``AsyncResult`` reads it. A message is acked after its outcome is stored (at-least-once); one
with a future ``eta`` (Celery's countdown) is held here, unacked, until due, as a Celery
worker does; a cut-short one goes back to the head of its queue. When a task ends, its
``link`` / ``link_error`` signatures and the next step of its chain are sent on in Celery's
protocol, before the ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asyncq._utils import now
from asyncq.celery.protocol import CeleryTask, decode_envelope, encode_envelope, follow_ups, result_meta
from asyncq.celery.redis_transport import CeleryRedis, Taken
from asyncq.exceptions import (
    AsyncqError,
    ConfigurationError,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SerializationError,
)
from asyncq.message import Message
from asyncq.task import Request

if TYPE_CHECKING:
    from typing import TypeAlias

    from asyncq.app import App
    from asyncq.celery.amqp_transport import CeleryAMQP
    from asyncq.flow.gate import FlowGate
    from asyncq.task import Task
    from asyncq.worker.executor import Executor
    from asyncq.worker.tracking import JobBook

    Transport: TypeAlias = CeleryRedis | CeleryAMQP

__all__ = ["CeleryConsumer", "celery_urls", "open_transports"]

logger = logging.getLogger(__name__)

#: Seconds between attempts to resume after Redis failed.
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


def celery_urls(app: App) -> tuple[str, str]:
    """The URLs of the Celery queues (Redis or RabbitMQ) and of Celery's results, from the settings."""
    conf = app.conf
    broker = str(conf.celery_broker_url or app.broker_url or "")
    if not broker.startswith((*_REDIS, *_AMQP)):
        raise ConfigurationError(
            f"celery_queues need a Redis or RabbitMQ URL: set celery_broker_url (the broker is {broker!r})"
        )
    results = str(conf.celery_result_backend or ("rpc://" if broker.startswith(_AMQP) else broker))
    if results.startswith("rpc://") and not broker.startswith(_AMQP):
        raise ConfigurationError("celery_result_backend rpc:// needs a RabbitMQ celery_broker_url")
    if not results.startswith((*_REDIS, "rpc://")):
        raise ConfigurationError(f"celery_result_backend must be a Redis URL or rpc://, got {results!r}")
    return broker, results


_REDIS = ("redis://", "rediss://", "unix://")
_AMQP = ("amqp://", "amqps://")


def open_transports(app: App) -> tuple[Transport, Transport]:
    """The transports of the Celery queues and of Celery's results (the same one for rpc://)."""
    broker_url, results_url = celery_urls(app)
    conf = app.conf
    timeout = float(conf.broker_connection_timeout or 10.0)
    broker: Transport
    if broker_url.startswith(_AMQP):
        from asyncq.celery.amqp_transport import CeleryAMQP

        prefetch = int(conf.worker_prefetch or conf.worker_concurrency)
        broker = CeleryAMQP(broker_url, timeout=timeout, prefetch=prefetch)
    else:
        broker = CeleryRedis(broker_url, timeout=timeout)
    if results_url.startswith("rpc://") or results_url == broker_url:
        return broker, broker
    return broker, CeleryRedis(results_url, timeout=timeout)


class CeleryConsumer:
    """Consumes ``app.conf.celery_queues`` for a worker, until cancelled.

    Args:
        app: the worker's app (tasks, settings).
        executor: the worker's executor.
        slots: the worker's concurrency semaphore; a job holds one slot while it runs.
        adopt: hands a started job to the worker, which releases its slot when it ends
            and waits for it on shutdown.
        hostname: the worker's name, put in ``self.request.hostname`` and STARTED records.
        flow: the worker's flow-control gate: a task's ``rate_limit`` and ``concurrency_key``
            hold Celery messages as they hold native ones (shared with them, in the same store).
        give_slot / take_slot: give the job's concurrency slot back while a limit holds it,
            and take one again before it runs.
        book / is_revoked: the worker's book of taken and running jobs and its revocation
            check, so that ``inspect`` lists Celery jobs and ``revoke`` (with ``terminate``)
            reaches them as it reaches native ones.
    """

    def __init__(
        self,
        app: App,
        executor: Executor,
        *,
        slots: asyncio.Semaphore,
        adopt: Callable[[asyncio.Task[None]], None],
        hostname: str,
        flow: FlowGate | None = None,
        give_slot: Callable[[], bool] = lambda: False,
        take_slot: Callable[[], Awaitable[None]] | None = None,
        book: JobBook | None = None,
        is_revoked: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.book = book
        self.is_revoked = is_revoked or (lambda _: False)
        self.flow = flow
        self.give_slot, self.take_slot = give_slot, take_slot
        self.executor = executor
        self.slots = slots
        self.adopt = adopt
        self.hostname = hostname
        conf = app.conf
        self.queues = list(conf.celery_queues)
        self.task_map: dict[str, str] = dict(conf.celery_task_map or {})
        self.result_ttl: float | None = conf.result_expires
        self.track_started = bool(conf.task_track_started)
        self.default_limits = (conf.task_soft_time_limit, conf.task_time_limit)
        # Opened in serve(): a bad URL then fails the worker through its loop, which cleans up.
        self.broker: Transport
        self.results: Transport
        self._reply_to: dict[str, str] = {}  # task id -> the caller's rpc:// reply queue
        self._held: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def serve(self) -> None:
        """Take and run Celery messages until cancelled; held (eta) messages go back on exit."""
        self.broker, self.results = open_transports(self.app)
        logger.info("consuming Celery queues %s", ",".join(self.queues))
        try:
            await self._consume()
        finally:
            for held in self._held:
                held.cancel()
            await asyncio.gather(*self._held, return_exceptions=True)
            # Jobs still running (the worker drains them) ack through these connections: the
            # last one to end closes them.
            self._stopping = True
            if not self._running:
                await asyncio.shield(self._close())

    async def _close(self) -> None:
        await self.broker.aclose()
        if self.results is not self.broker:
            await self.results.aclose()

    async def _consume(self) -> None:
        failures = 0
        declared = False
        while True:
            await self.slots.acquire()  # a slot first: never take a message nobody can run now
            started = False
            try:
                if not declared:
                    await self.broker.declare(self.queues)
                    declared = True
                taken = await self.broker.take(self.queues)
                failures = 0
                if taken is not None:
                    started = self._dispatch(taken)
            except AsyncqError as exc:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                logger.error("consuming Celery queues failed (%s); resuming in %.1fs", exc, delay)
                self.slots.release()
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.slots.release()
                raise
            if not started:
                self.slots.release()

    def _dispatch(self, taken: Taken) -> bool:
        """Start the job of ``taken`` in the held slot (True), or hold it until its eta (False)."""
        eta = _peek_eta(taken.raw)
        if eta is not None and eta > now() + 0.01:
            held = asyncio.create_task(self._hold(taken, eta), name="asyncq.celery.eta")
            self._held.add(held)
            held.add_done_callback(self._held.discard)
            return False
        self._start(taken)
        return True

    def _start(self, taken: Taken) -> None:
        task_id = _peek_header(taken.raw, "id") or taken.tag  # the name cancel_job() looks for
        job = asyncio.create_task(self._job(taken), name=f"asyncq.job.{task_id}")
        self._running.add(job)
        self.adopt(job)

    async def _job(self, taken: Taken) -> None:
        try:
            await self._handle(taken)
        finally:
            self._running.discard(asyncio.current_task())
            if self._stopping and not self._running:
                await asyncio.shield(self._close())

    async def _hold(self, taken: Taken, eta: float) -> None:
        try:
            await asyncio.sleep(max(0.0, eta - now()))
            await self.slots.acquire()
        except asyncio.CancelledError:
            await asyncio.shield(self._settle(self.broker.requeue(taken)))
            raise
        self._start(taken)

    # -- one message --------------------------------------------------------------------------

    async def _handle(self, taken: Taken) -> None:
        message: CeleryTask | None = None
        try:
            try:
                _, message = decode_envelope(taken.raw)
                if message.reply_to:
                    self._reply_to[message.id] = message.reply_to
            except SerializationError as exc:
                logger.error("dropping an undecodable message from Celery queue %s: %s", taken.queue, exc)
                task_id = _peek_header(taken.raw, "id")
                if task_id:
                    await self._store(str(task_id), "FAILURE", exc=exc)
                await self._settle(self.broker.ack(taken))
                return
            name = self.task_map.get(message.task, message.task)
            task = self.app.tasks.get(name)
            if task is None:
                reason = f"unknown task {message.task!r}: not registered in app {self.app.main!r}"
                logger.error("Celery message %s: %s", message.id, reason)
                await self._store(message.id, "FAILURE", exc=NotRegistered(reason))
            elif message.expires is not None and now() > message.expires:
                logger.info("Celery task %s[%s] expired before it ran", message.task, message.id)
                await self._store_revoked(message.id, "expired")
            elif self.is_revoked(message.id):
                logger.info("Celery task %s[%s] revoked before it ran", message.task, message.id)
                await self._store_revoked(message.id, "revoked")
            else:
                if self.book is not None:
                    self.book.reserve(_native(message, name, taken.queue), taken.queue)
                if not await self._run(taken, message, task):
                    return
            await self._settle(self.broker.ack(taken))
        except asyncio.CancelledError:
            if message is not None and self.is_revoked(message.id):
                # Revoked with terminate: settled as REVOKED, so that no other worker starts it.
                await asyncio.shield(self._terminated(taken, message))
            else:  # shutdown cut it short: back to the head of its queue, for the next worker
                await asyncio.shield(self._settle(self.broker.requeue(taken)))
            raise
        except Exception:  # a bug on this path must not lose the message nor spin on it
            logger.exception("internal error handling a Celery message; returning it to its queue")
            await asyncio.sleep(1.0)
            await self._settle(self.broker.requeue(taken))
        finally:
            task_id = message.id if message is not None else str(_peek_header(taken.raw, "id"))
            self._reply_to.pop(task_id, None)
            if self.book is not None:
                self.book.finish(task_id)

    async def _terminated(self, taken: Taken, message: CeleryTask) -> None:
        logger.info("Celery task %s[%s] terminated by a revoke", message.task, message.id)
        await self._store_revoked(message.id, "revoked while running")
        await self._settle(self.broker.ack(taken))

    async def _run(self, taken: Taken, message: CeleryTask, task: Task[Any, Any]) -> bool:
        """Run the task within its limits; False when the message was settled otherwise."""
        flow = self.flow
        if flow is None or (task.rate is None and task.concurrency is None):
            return await self._run_now(taken, message, task)
        try:
            key = flow.key_of(task, message)
        except Exception as exc:  # the user's concurrency_key raised: the message can never run
            logger.error("Celery task %s[%s]: concurrency_key failed: %r", task.name, message.id, exc)
            await self._store(message.id, "FAILURE", exc=exc)
            return True
        gave = False

        def waiting(_: CeleryTask, limit: str, value: str | None, wait: float | None) -> None:
            nonlocal gave
            if not gave:  # off the worker's slots while it waits, as a native message is
                gave = self.give_slot()

        try:
            try:
                permit = await flow.admit(task, message, key, waiting)
            finally:
                if gave and self.take_slot is not None:
                    await self.take_slot()
        except AsyncqError as exc:  # the limit store is away: back to its queue for a moment
            logger.warning(
                "Celery task %s[%s]: limits unavailable (%s); requeued", task.name, message.id, exc
            )
            await asyncio.sleep(1.0)
            await self._settle(self.broker.requeue(taken))
            return False
        try:
            return await self._run_now(taken, message, task)
        finally:
            await asyncio.shield(flow.release(permit))

    async def _run_now(self, taken: Taken, message: CeleryTask, task: Task[Any, Any]) -> bool:
        """Run the task and store its outcome; False when the message was settled otherwise."""
        options = task.options
        track = self.track_started if options.track_started is None else options.track_started
        if track:
            await self._store(message.id, "STARTED", result={"hostname": self.hostname, "pid": os.getpid()})
        soft = _first(message.timelimit[0], options.soft_time_limit, self.default_limits[0])
        hard = _first(message.timelimit[1], options.time_limit, self.default_limits[1])
        request = Request.delivered(
            message,
            task=task.name,
            delivery_info={
                "queue": taken.queue,
                "exchange": taken.exchange,
                "routing_key": taken.routing_key,
                "priority": message.priority,
                "redelivered": bool(message.headers.get("redelivered")),
            },
            hostname=self.hostname,
            state_writer=lambda state, meta: self._store(message.id, str(state), result=meta),
            loop=asyncio.get_running_loop(),
        )
        if self.book is not None:
            self.book.start(message.id, request)
        started = time.perf_counter()
        try:
            result = await self.executor.run(task, request, soft_time_limit=soft, time_limit=hard)
        except Retry as retry:
            await self._retry(taken, message, task, retry.exc, retry.when)
        except Reject as reject:
            if reject.requeue:
                await self._settle(self.broker.requeue(taken))
                return False
            logger.error("Celery task %s[%s] rejected: %s", task.name, message.id, reject.reason)
            await self._store(message.id, "FAILURE", exc=reject)  # no link_error: Celery sends none
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if options.autoretry_for and isinstance(exc, options.autoretry_for):
                await self._retry(taken, message, task, exc, None)
            else:
                logger.warning(
                    "Celery task %s[%s] failed in %.3fs: %r",
                    task.name,
                    message.id,
                    time.perf_counter() - started,
                    exc,
                )
                await self._store(message.id, "FAILURE", exc=exc)
                await self._follow_up(taken, message, succeeded=False)
        else:
            logger.info(
                "Celery task %s[%s] succeeded in %.3fs", task.name, message.id, time.perf_counter() - started
            )
            ignore = message.ignore_result or bool(options.ignore_result)
            if not ignore:
                await self._store(message.id, "SUCCESS", result=result)
            await self._follow_up(taken, message, succeeded=True, result=result)
        return True

    async def _follow_up(
        self, taken: Taken, message: CeleryTask, *, succeeded: bool, result: Any = None
    ) -> None:
        """Send the message's links (or link errors) and next chain step, in Celery's protocol.

        A signature without a queue goes to the queue the finished task came from: a Celery
        producer's links then run where its task ran, on asyncq or on Celery workers.
        """
        embed = message.embed
        if not (embed.get("callbacks") or embed.get("errbacks") or embed.get("chain")):
            return
        try:
            for queue, follow in follow_ups(message, succeeded=succeeded, result=result):
                target = queue or taken.queue
                routing_key = queue or taken.routing_key
                await self.broker.publish(
                    target, encode_envelope(follow, queue=routing_key), priority=follow.priority
                )
                logger.info(
                    "Celery task %s[%s] sent %s[%s]", message.task, message.id, follow.task, follow.id
                )
        except (AsyncqError, TypeError, ValueError) as exc:  # the task is done: a bad follow-up can't undo it
            logger.error(
                "could not send the follow-ups of Celery task %s[%s]: %s", message.task, message.id, exc
            )

    async def _retry(
        self,
        taken: Taken,
        message: CeleryTask,
        task: Task[Any, Any],
        exc: BaseException | None,
        when: float | None,
    ) -> None:
        limit = task.max_retries
        if limit is not None and message.retries >= limit:
            failure = exc if exc is not None else MaxRetriesExceededError(f"max_retries={limit} exceeded")
            logger.warning(
                "Celery task %s[%s] gave up after %d retries: %r",
                task.name,
                message.id,
                message.retries,
                failure,
            )
            await self._store(message.id, "FAILURE", exc=failure)
            await self._follow_up(taken, message, succeeded=False)
            return
        delay = task.retry_delay(message.retries) if when is None else when
        again = replace(
            message,
            retries=message.retries + 1,
            eta=now() + delay if delay > 0 else None,
            headers={k: v for k, v in message.headers.items() if k != "redelivered"},
        )
        # RETRY first: stored after the next attempt is published, it could replace that
        # attempt's SUCCESS (see the native worker's retry).
        if exc is not None:
            await self._store(message.id, "RETRY", exc=exc)
        else:
            await self._store(message.id, "RETRY", result=None)
        # Publish the next attempt before acking this one: a crash in between duplicates, never loses.
        await self.broker.publish(
            taken.queue, encode_envelope(again, queue=taken.routing_key), priority=message.priority
        )
        logger.info(
            "Celery task %s[%s] retry %d in %.2fs: %r", task.name, message.id, again.retries, delay, exc
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _store(
        self, task_id: str, status: str, *, result: Any = None, exc: BaseException | None = None
    ) -> None:
        meta = result_meta(task_id, status, result=result, exc=exc)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            # Celery's JSON result serializer could not carry it either: say so to the caller.
            meta = result_meta(task_id, "FAILURE", exc=SerializationError(f"result is not JSON: {err}"))
        try:
            await self.results.store_result(
                task_id, meta, ttl=self.result_ttl, reply_to=self._reply_to.get(task_id, "")
            )
        except AsyncqError:
            logger.exception("could not store the %s state of Celery task %s", status, task_id)

    async def _store_revoked(self, task_id: str, reason: str) -> None:
        meta = result_meta(task_id, "REVOKED")
        # Celery's own class and module, so the Celery caller raises celery.exceptions.TaskRevokedError.
        meta["result"] = {
            "exc_type": "TaskRevokedError",
            "exc_message": [reason],
            "exc_module": "celery.exceptions",
        }
        try:
            await self.results.store_result(
                task_id, meta, ttl=self.result_ttl, reply_to=self._reply_to.get(task_id, "")
            )
        except AsyncqError:
            logger.exception("could not store the REVOKED state of Celery task %s", task_id)

    @staticmethod
    async def _settle(settling: Any) -> None:
        try:
            await settling
        except AsyncqError:
            # Left in kombu's unacked hash: a Celery worker's visibility restore brings it back.
            logger.exception("could not settle a Celery message")


def _native(message: CeleryTask, name: str, queue: str) -> Message:
    """What ``inspect`` shows of a Celery job: the fields the worker's book reads."""
    return Message(id=message.id, task=name, args=message.args, kwargs=message.kwargs, queue=queue)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _peek_header(raw: bytes, name: str) -> Any:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return (json.loads(raw).get("headers") or {}).get(name)
    return None


def _peek_eta(raw: bytes) -> float | None:
    from asyncq.celery.protocol import from_iso

    with contextlib.suppress(AsyncqError):
        return from_iso(_peek_header(raw, "eta"))
    return None
