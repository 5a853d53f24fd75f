"""Publishing for the RabbitMQ broker: routes, confirmed sends, and settling by re-publishing.

:class:`Publisher` decides where a message goes (its queue or a delay queue), sends it and
waits for the confirm across reconnects, and implements the publish-then-ack settlements
(nack, hop, redelivery counting, dead-lettering) under the :class:`~asyncq._amqp.CopyGuard`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any, cast

import aiormq
from aiormq.exceptions import ChannelInvalidStateError, PublishError
from pamqp.commands import Basic

from asyncq._amqp import CopyGuard, ack_confirmed, is_stale, requeue, translate_errors
from asyncq._amqp.acks import Message
from asyncq._amqp.confirms import PublishNacked, PublishReturned
from asyncq._amqp.publishing import publish
from asyncq._utils import now
from asyncq.brokers.base import OutgoingMessage
from asyncq.brokers.rabbitmq.topology import Topology
from asyncq.brokers.rabbitmq.wire import (
    BOOKKEEPING_RETRY_DELAY,
    H_COPY,
    H_DEAD_AT,
    H_DELIVERIES,
    H_ETA,
    H_PRIORITY,
    H_QUEUE,
    H_REASON,
    H_RETURNS,
    HOP_PRIORITY,
    PUBLISH_WINDOW,
    Route,
    carried_headers,
    int_header,
    level_name,
    pick_level,
)
from asyncq.exceptions import AsyncqError, BrokerConnectionError, BrokerError

__all__ = ["Publisher"]

log = logging.getLogger("asyncq.brokers.rabbitmq")


class Publisher(Topology):
    """Publishing on the broker's confirmed channel, and settlements that re-publish."""

    def _priority_of(self, message: Message) -> int:
        original = message.headers.get(H_PRIORITY)
        if isinstance(original, int) and not isinstance(original, bool):
            return original
        return message.priority or 0

    def _route(
        self,
        message_id: str,
        queue: str,
        body: bytes,
        priority: int | None,
        eta: float | None,
        headers: dict[str, Any],
        *,
        via_exchange: bool,
    ) -> Route:
        """Decide where a message goes now: its queue, or the right delay queue for its eta.

        ``via_exchange`` is True for first publishes (routed by the exchange) and False for
        re-publishes, which go straight back to the queue they came from.
        """
        priority = max(0, min(9, priority or 0))
        remaining_ms = 0 if eta is None else int(eta * 1000) - int(now() * 1000)
        if remaining_ms > 0:
            eta_ms = int(eta * 1000) if eta is not None else 0
            level, is_last = pick_level(remaining_ms)
            headers = {**headers, H_ETA: eta_ms, H_PRIORITY: priority}
            return Route(
                "",
                level_name(queue, level),
                body,
                self._properties(message_id, priority if is_last else HOP_PRIORITY, headers),
                queue,
                is_delayed=True,
            )
        headers.pop(H_ETA, None)
        headers.pop(H_PRIORITY, None)
        if via_exchange and self.exchange:
            return Route(
                self.exchange, queue, body, self._properties(message_id, priority, headers), queue, False
            )
        return Route("", queue, body, self._properties(message_id, priority, headers), queue, False)

    def _properties(self, message_id: str, priority: int, headers: dict[str, Any]) -> Basic.Properties:
        return Basic.Properties(
            message_id=message_id,
            delivery_mode=2,  # persistent
            priority=priority,
            headers=headers or None,
        )

    async def _prepare(self, route: Route) -> None:
        """Declare what ``route`` needs, riding out a connection drop as a publish does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while True:
            try:
                if route.is_delayed:
                    await self._declare_delays(route.queue)
                else:
                    await self._declare(route.queue)
                return
            except BrokerConnectionError:
                if self._connection is None or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # let the robust connection notice the loss and restore

    async def _send(self, route: Route, action: str) -> None:
        """Publish one message and wait for the broker's confirm, riding out a reconnect.

        A publish whose confirm was lost with the connection is sent again: RabbitMQ may then
        hold it twice, which at-least-once delivery allows; it is never silently dropped.
        """
        if self._lean_confirmed is not None:
            # The lean client raises asyncq's errors itself: no translating block per publish,
            # only this handler (free until something raises) for anything it did not expect.
            try:
                await self._send_lean(route, action)
            except AsyncqError:
                raise
            except Exception:
                with translate_errors(action):
                    raise
            return
        with translate_errors(action):
            await self._send_until_confirmed(route, action)

    async def _send_until_confirmed(self, route: Route, action: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        redeclared = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._ready()
                    channel = self._publish_channel
                    assert channel is not None
                    await channel.ready()
                    # The concrete aiormq channel: publishes of one loop iteration (a window
                    # of publish_many, concurrent enqueues) go out in one write, confirms pipelined.
                    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                    await publish(
                        underlay,
                        route.body,
                        exchange=route.exchange,
                        routing_key=route.routing_key,
                        properties=route.properties,
                        mandatory=True,
                    )
                return
            except PublishError as exc:
                await self._declare_again(route, action, exc, redeclared)
                redeclared = True
            except TimeoutError as exc:
                raise BrokerConnectionError(
                    f"{action}: not confirmed by RabbitMQ within publish_timeout={self.publish_timeout}s"
                ) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise BrokerError(f"{action}: RabbitMQ refused the message ({exc!r})") from exc
            except (
                ChannelInvalidStateError,
                aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.ChannelClosed,
                ConnectionError,
            ):
                if self._connection is None:
                    raise BrokerConnectionError(f"{action}: the broker was closed") from None
                log.debug("%s: channel lost mid-publish; sending again after the reconnect", action)
                await asyncio.sleep(0.05)  # let the robust connection notice and start restoring

    async def _declare_again(self, route: Route, action: str, exc: Exception, redeclared: bool) -> None:
        """A returned (unroutable) publish: the queue or binding vanished (deleted by hand, node
        reset). Declare again once, then give up loudly rather than drop it."""
        if redeclared:
            raise BrokerError(f"{action}: RabbitMQ could not route it to {route.routing_key!r}") from exc
        self._declared.discard(route.queue)
        self._delay_declared.discard(route.queue)
        await self._prepare(route)

    async def _send_lean(self, route: Route, action: str) -> None:
        """``_send_until_confirmed`` on asyncq's own publishing connection (client=lean)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        redeclared = False
        while True:
            publisher = self._lean_confirmed
            if publisher is None or self._connection is None:
                raise BrokerConnectionError(f"{action}: the broker was closed")
            try:
                await publisher.publish(
                    route.exchange,
                    route.routing_key,
                    route.body,
                    route.properties,
                    mandatory=True,
                    deadline=deadline,
                )
                return
            except PublishReturned as exc:
                with translate_errors(action):  # declaring again goes through aio-pika
                    await self._declare_again(route, action, exc, redeclared)
                redeclared = True
            except PublishNacked as exc:
                raise BrokerError(f"{action}: {exc}") from exc
            except TimeoutError as exc:
                raise BrokerConnectionError(
                    f"{action}: not confirmed by RabbitMQ within publish_timeout={self.publish_timeout}s"
                    + publisher.blocked_note()
                ) from exc
            except BrokerConnectionError:
                if self._connection is None:
                    raise BrokerConnectionError(f"{action}: the broker was closed") from None
                log.debug("%s: connection lost mid-publish; sending again after reconnecting", action)
                await asyncio.sleep(0.05)

    async def _send_unconfirmed(self, route: Route, action: str) -> None:
        """confirm_publish=False: queue the frames (batched per loop iteration) and return.

        Not mandatory and not confirmed: a message the server cannot route, or one in flight
        when the connection drops, is lost without an error. Connection losses seen before
        the write are ridden out as a confirmed publish does.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while True:
            lean = self._lean_unconfirmed
            if lean is not None:
                try:
                    await lean.publish(
                        route.exchange, route.routing_key, route.body, route.properties, deadline=deadline
                    )
                    return
                except TimeoutError:
                    raise BrokerConnectionError(
                        f"{action}: RabbitMQ unreachable for publish_timeout={self.publish_timeout}s"
                        + lean.blocked_note()
                    ) from None
                except BrokerConnectionError:
                    if self._connection is None or loop.time() >= deadline:
                        raise
                    await asyncio.sleep(0.05)
                    continue
            try:
                with translate_errors(action):
                    async with asyncio.timeout_at(deadline):
                        await self._ready()
                        channel = self._unconfirmed_channel
                        assert channel is not None
                        await channel.ready()
                        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                        await publish(
                            underlay,
                            route.body,
                            exchange=route.exchange,
                            routing_key=route.routing_key,
                            properties=route.properties,
                        )
                return
            except BrokerConnectionError:
                if self._connection is None or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # let the robust connection notice the loss and restore

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish one message; return once RabbitMQ confirmed it (or once written, confirm_publish=False)."""
        route = self._route(
            message.id, message.queue, message.body, message.priority, message.eta, {}, via_exchange=True
        )
        await self._prepare(route)
        if self.confirm_publish:
            await self._send(route, f"publish message {message.id}")
        else:
            await self._send_unconfirmed(route, f"publish message {message.id}")

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish all, then await all confirms (in windows of PUBLISH_WINDOW).

        If some fail, the others may still be stored: the error says how many failed.
        """
        if not messages:
            return
        routes = [
            self._route(m.id, m.queue, m.body, m.priority, m.eta, {}, via_exchange=True) for m in messages
        ]
        for route in {(r.queue, r.is_delayed): r for r in routes}.values():
            await self._prepare(route)
        if not self.confirm_publish:
            await asyncio.gather(*(self._send_unconfirmed(route, "publish_many") for route in routes))
            return
        loop = asyncio.get_running_loop()
        for start in range(0, len(routes), PUBLISH_WINDOW):
            window = routes[start : start + PUBLISH_WINDOW]
            # Tasks start in order and each writes its frames before its first real await,
            # so the broker receives the window in order; only the confirms are awaited
            # concurrently.
            tasks = [
                loop.create_task(self._send(route, "publish_many"), name="asyncq.rabbitmq.publish")
                for route in window
            ]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [result for result in results if isinstance(result, BaseException)]
            if errors:
                error = BrokerConnectionError if isinstance(errors[0], BrokerConnectionError) else BrokerError
                raise error(
                    f"publish_many: {len(errors)} of {len(messages)} messages were not confirmed "
                    f"(the first {start} were): {errors[0]}"
                ) from errors[0]

    async def _replace(
        self, message: Message, route: Route, action: str, *, requeue_on_failure: bool = True
    ) -> None:
        """Settle ``message`` by publishing ``route`` (confirmed), then acking the original.

        In that order a crash in between leaves two copies, never none. If the publish fails,
        the original is handed back to its queue so it does not sit unacked on a live channel.
        """
        if is_stale(message):
            raise BrokerConnectionError(
                f"cannot {action}: the channel that delivered it is gone, so RabbitMQ will deliver it again"
            )
        headers = dict(route.properties.headers or {})
        headers[H_COPY] = uuid.uuid4().hex
        route.properties.headers = headers
        copies = self._copies
        token = copies.begin()
        try:
            try:
                await self._prepare(route)
                if is_stale(message):
                    # Lost while declaring: the server redelivers the original, so sending
                    # the copy now would make two.
                    raise BrokerConnectionError(f"cannot {action}: the channel that delivered it is gone")
                await self._send(route, action)
            except BaseException:
                if requeue_on_failure:
                    await requeue(message)
                raise
            copies.copied(CopyGuard.incarnation(message, H_COPY))
            with translate_errors(action):
                await ack_confirmed(message, self.publish_timeout)
        finally:
            copies.end(token)

    async def _drop_leftover(self, message: Message) -> None:
        """Ack an original that came back although its copy was sent (its ack was lost)."""
        log.info("message %s was already re-published; dropping the redelivered original", message.message_id)
        try:
            with translate_errors(f"drop message {message.message_id}"):
                await ack_confirmed(message, self.publish_timeout)
        except BrokerError as exc:  # the next redelivery tries again
            log.debug("%s", exc)

    async def _dead_letter(
        self, message: Message, queue: str, reason: str, *, requeue_on_failure: bool = True
    ) -> None:
        headers = carried_headers(message.headers)
        headers.update({H_QUEUE: queue, H_REASON: reason, H_DEAD_AT: int(now() * 1000)})
        headers.pop(H_ETA, None)
        message_id = message.message_id or ""
        properties = self._properties(message_id, self._priority_of(message), headers)
        route = Route("", f"{queue}.dead", message.body, properties, queue, False)
        await self._replace(
            message, route, f"dead-letter message {message_id}", requeue_on_failure=requeue_on_failure
        )

    async def _hop(self, message: Message, queue: str) -> None:
        """Move a message that reached its queue before its eta into the next delay queue."""
        headers = carried_headers(message.headers)
        eta = int_header(headers, H_ETA) / 1000
        route = self._route(
            message.message_id or "",
            queue,
            message.body,
            self._priority_of(message),
            eta,
            headers,
            via_exchange=False,
        )
        await self._background(message, self._replace(message, route, "delay", requeue_on_failure=False))

    async def _count_lost(self, message: Message, queue: str) -> None:
        """Record a classic-queue redelivery in the message's headers, or park it as poison.

        Classic queues only flag a redelivery; re-publishing with the counters incremented
        makes ``delivery_count`` exact and lets ``max_deliveries`` stop crash loops (the copy
        goes to the back of the queue).
        """
        headers = carried_headers(message.headers)
        lost = int_header(headers, H_RETURNS) + 1
        if lost >= self.max_deliveries:
            reason = (
                f"delivered {lost} times in a row to consumers that were lost before settling it "
                f"(max_deliveries={self.max_deliveries})"
            )
            await self._background(
                message, self._dead_letter(message, queue, reason, requeue_on_failure=False)
            )
            return
        headers[H_DELIVERIES] = int_header(headers, H_DELIVERIES) + 1
        headers[H_RETURNS] = lost
        route = self._route(
            message.message_id or "",
            queue,
            message.body,
            self._priority_of(message),
            None,
            headers,
            via_exchange=False,
        )
        await self._background(message, self._replace(message, route, "count", requeue_on_failure=False))

    async def _background(self, message: Message, work: Any) -> None:
        # Hops and redelivery bookkeeping run off the iterator, so a failure is logged, not
        # raised; the message goes back to its queue after a pause, which keeps a lasting
        # fault (say, a delay queue declared with other arguments) from spinning.
        try:
            await work
        except Exception as exc:  # see above
            if self._connection is None:
                return  # closing: the server requeues whatever is unacked
            log.warning("RabbitMQ bookkeeping of message %s failed; requeued: %s", message.message_id, exc)
            await asyncio.sleep(BOOKKEEPING_RETRY_DELAY)
            await requeue(message)
