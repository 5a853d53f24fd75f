"""The optional broker capability behind ``enqueue(..., connection=conn)``.

A broker that stores its messages in the caller's database can write them through the
caller's own connection, inside the caller's transaction: committed together with the
caller's rows, or not at all. Only drivers that can do this natively implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from asyncq.brokers.base import OutgoingMessage

__all__ = ["TransactionalBroker"]


@runtime_checkable
class TransactionalBroker(Protocol):
    """A broker that can publish through a connection (and transaction) the caller owns."""

    async def publish_in_transaction(self, connection: Any, messages: Sequence[OutgoingMessage]) -> None:
        """Write ``messages`` through ``connection``; they are delivered only once it commits.

        Raises:
            ConfigurationError: ``connection`` is not a connection this driver can use.
        """
