"""aio-pika plumbing shared by the RabbitMQ broker, the rpc:// backend and the other AMQP users.

* :mod:`.connection`: robust connections opened within a deadline and closed cleanly;
* :mod:`.acks`: acks (plain, batched per loop iteration, and confirmed), requeues and the
  :class:`CopyGuard`;
* :mod:`.publishing`: publishes of one loop iteration written together, confirms pipelined;
* :mod:`.frames`, :mod:`.protocol`: the lean AMQP consumer connection (pamqp's codec, one
  ``asyncio.Protocol``, no task per delivery);
* :mod:`.errors`: aio-pika / aiormq exceptions translated into asyncq's;
* :mod:`.url`: amqp(s):// URLs split into asyncq's options and the client library's.

Nothing here imports a driver: the drivers import this.
"""

from asyncq._amqp.acks import CopyGuard, ack, ack_confirmed, delivered, flush_acks, is_stale, requeue
from asyncq._amqp.connection import CLOSE_TIMEOUT, close_robust, open_robust
from asyncq._amqp.errors import translate_errors
from asyncq._amqp.url import CLIENT_OPTIONS, DEFAULT_RECONNECT_INTERVAL, client_url, split_amqp_url

__all__ = [
    "CLIENT_OPTIONS",
    "CLOSE_TIMEOUT",
    "DEFAULT_RECONNECT_INTERVAL",
    "CopyGuard",
    "ack",
    "ack_confirmed",
    "client_url",
    "close_robust",
    "delivered",
    "flush_acks",
    "is_stale",
    "open_robust",
    "requeue",
    "split_amqp_url",
    "translate_errors",
]
