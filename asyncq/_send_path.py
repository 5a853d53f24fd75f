"""The producer's send path: encode a built message, publish it, hand back its result handle.

The :class:`~asyncq.app.App` methods ``outgoing``, ``send_message`` and ``send_many`` delegate
here, so the app module keeps to configuration, registry and drivers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncq._sending import publish_until_confirmed_or_arrived
from asyncq.backends import ResultBackend
from asyncq.backends.base import REPLY_TO, BackendDefaults
from asyncq.brokers import OutgoingMessage
from asyncq.brokers.transactional import TransactionalBroker
from asyncq.exceptions import ConfigurationError, SerializationError
from asyncq.fair import fair_fields
from asyncq.message import SENT_AT, Message, encode_message
from asyncq.result import AsyncResult

if TYPE_CHECKING:
    from asyncq.app import App, _Drivers

__all__ = ["outgoing", "send_many", "send_message"]


def outgoing(app: App, message: Message) -> OutgoingMessage:
    """Encode a message for the broker (:meth:`App.outgoing`)."""
    if app._stamp_sent:  # for the queue-wait metric; a retry is stamped anew
        message.headers = {**message.headers, SENT_AT: time.time()}
    if app.publish_hook is not None:
        app.publish_hook(message)
    task = app.tasks.get(message.task)
    security = app.security
    encrypt = security.should_encrypt(task.options.encrypt if task is not None else None)
    serializers = app.serializers
    try:
        body = encode_message(message, serializers, encrypt=encrypt)
    except SerializationError as exc:
        from asyncq._explain import unserializable_argument

        fn, bound = (task.run, bool(task.options.bind)) if task is not None else (None, False)
        raise unserializable_argument(message, serializers, fn, bound=bound) or exc from exc
    body = security.seal_outgoing(body, message.task)  # signs; enforces message_max_bytes
    headers = message.headers
    if not headers:
        return OutgoingMessage(message.id, message.queue, body, message.priority, message.eta)
    fair_key, fair_weight = fair_fields(headers)
    return OutgoingMessage(
        message.id, message.queue, body, message.priority, message.eta, fair_key, fair_weight
    )


async def send_message(
    app: App, message: Message, *, task_name: str | None = None, connection: Any = None
) -> AsyncResult[Any]:
    """Publish a built message; return the handle on its result (:meth:`App.send_message`)."""
    drivers = app._current_drivers()
    if not drivers.connected:
        await app.connect()
    transactional = None if connection is None else _transactional(app, drivers)
    arrival = None
    if not message.ignore_result:
        backend = drivers.backend
        if not _passive(backend):
            await backend.prepare(message.id)  # rpc:// readies its reply queue before a record comes
            backend.expect(message.id)  # redis:// subscribes ahead, for a wait that may follow
            _address_replies(message, backend)
            if transactional is None:
                arrival = backend.arrival(message.id)
    if arrival is not None:
        await publish_until_confirmed_or_arrived(drivers.broker.publish(outgoing(app, message)), arrival)
    elif transactional is None:
        await drivers.broker.publish(outgoing(app, message))
    else:
        await transactional.publish_in_transaction(connection, [outgoing(app, message)])
    app.events.task_sent(message)
    return AsyncResult(message.id, app, task_name=task_name or message.task)


#: Backend class -> whether it keeps BackendDefaults' four do-nothing send hooks.
_PASSIVE: dict[type, bool] = {}
_HOOKS = ("prepare", "expect", "arrival", "reply_address")


def _passive(backend: ResultBackend) -> bool:
    """Whether the send hooks of ``backend`` all do nothing, so a send may skip calling them."""
    cls = type(backend)
    passive = _PASSIVE.get(cls)
    if passive is None:
        passive = _PASSIVE[cls] = all(
            getattr(cls, hook, None) is getattr(BackendDefaults, hook) for hook in _HOOKS
        )
    return passive


async def send_many(
    app: App, messages: Sequence[Message], *, connection: Any = None
) -> list[AsyncResult[Any]]:
    """Publish many messages in as few broker round trips as the driver allows (:meth:`App.send_many`)."""
    await app.connect()
    drivers = app._current_drivers()
    transactional = None if connection is None else _transactional(app, drivers)
    backend = drivers.backend
    for message in messages:
        if not message.ignore_result:
            await backend.prepare(message.id)
            backend.expect(message.id)
            _address_replies(message, backend)
    encoded = [outgoing(app, m) for m in messages]
    if transactional is None:
        await drivers.broker.publish_many(encoded)
    else:
        await transactional.publish_in_transaction(connection, encoded)
    app.events.tasks_sent(messages)
    return [AsyncResult(m.id, app, task_name=m.task) for m in messages]


def _transactional(app: App, drivers: _Drivers) -> TransactionalBroker:
    """What writes through a caller's connection: the broker itself, or the outbox; else an error."""
    if isinstance(drivers.broker, TransactionalBroker):
        return drivers.broker
    if drivers.outbox is not None:
        return drivers.outbox
    scheme = app.broker_url.partition(":")[0]
    raise ConfigurationError(
        f"the {scheme}:// broker cannot enqueue in a database transaction (connection=):"
        " set outbox_url to a postgresql:// URL (docs/outbox.md), use the postgresql://"
        " broker, or enqueue after your commit"
    )


def _address_replies(message: Message, backend: ResultBackend) -> None:
    # rpc:// routes records by the sender's reply queue; the worker reads it from the headers.
    address = backend.reply_address()
    if address is not None:
        message.headers[REPLY_TO] = address
