"""aio-pika / aiormq exceptions as asyncq errors, for the broker and the rpc:// backend alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiormq
from aiormq.exceptions import ChannelClosed, ChannelInvalidStateError, ChannelPreconditionFailed

from asyncq.exceptions import AsyncqError, BrokerConnectionError, BrokerError

__all__ = ["translate_errors"]


@contextlib.contextmanager
def translate_errors(
    action: str,
    error: type[AsyncqError] = BrokerError,
    connection_error: type[AsyncqError] = BrokerConnectionError,
) -> Iterator[None]:
    """Re-raise aio-pika / aiormq failures inside the block as asyncq errors naming ``action``.

    ``error`` / ``connection_error`` are the classes to raise (the RPC backend passes the
    backend branch of the tree); asyncq's own errors pass through unchanged.
    """
    try:
        yield
    except AsyncqError:
        raise
    except ChannelPreconditionFailed as exc:
        raise error(
            f"{action}: {exc}; an existing queue or exchange was declared with other arguments "
            "(another queue_type, exchange_type or max_deliveries?): delete it or use the same options"
        ) from exc
    except (ChannelInvalidStateError, aiormq.exceptions.AMQPConnectionError, ConnectionError, OSError) as exc:
        raise connection_error(f"{action}: connection to RabbitMQ lost ({exc!r})") from exc
    except ChannelClosed as exc:
        if type(exc) is not ChannelClosed or (exc.args and exc.args[0] is not None):
            raise error(f"{action}: {exc!r}") from exc  # the server's verdict, with its reply code
        # Closed under this call with no verdict on it (a neighbour's RPC was cancelled, or the
        # connection is being restored): the robust channel reopens, so it is worth retrying.
        raise connection_error(f"{action}: channel to RabbitMQ closed ({exc!r})") from exc
    except TimeoutError as exc:
        raise connection_error(f"{action}: RabbitMQ did not answer in time") from exc
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        # aiormq raises bare RuntimeError for "connection closed" states.
        raise error(f"{action}: {exc!r}") from exc
