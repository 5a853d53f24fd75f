"""Task states, and which of them are final."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["READY_STATES", "State"]


class State(StrEnum):
    """The life cycle of a task, with Celery's state names."""

    PENDING = "PENDING"  # unknown to the backend: queued, or never sent, or forgotten
    RECEIVED = "RECEIVED"  # a worker took the message
    STARTED = "STARTED"  # the task function is running
    RETRY = "RETRY"  # failed, another attempt is scheduled
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"  # revoked or expired; will not run


#: States after which the result never changes.
READY_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})
