"""What one worker holds right now: taken (reserved) and running tasks, for inspection and revoke."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncq.message import Message
    from asyncq.task import Request

__all__ = ["JobBook", "JobEntry"]


@dataclass(slots=True)
class JobEntry:
    """One taken message; ``started`` (epoch seconds) and ``request`` are set once it runs."""

    message: Message
    queue: str
    started: float | None = None
    request: Request | None = None


class JobBook:
    """Taken and running tasks of one worker, by task id; updated by the job runner, no I/O."""

    def __init__(self) -> None:
        self.entries: dict[str, JobEntry] = {}

    def reserve(self, message: Message, queue: str) -> JobEntry:
        """``message`` was taken from ``queue`` and decoded; its entry (the runner sets ``started``)."""
        entry = self.entries[message.id] = JobEntry(message, queue)
        return entry

    def start(self, task_id: str, request: Request) -> None:
        """The task starts running with ``request``."""
        entry = self.entries.get(task_id)
        if entry is not None:
            entry.started, entry.request = time.time(), request

    def finish(self, task_id: str) -> None:
        """The task's message is settled (or handed back)."""
        self.entries.pop(task_id, None)

    def running(self) -> list[JobEntry]:
        """Entries of the tasks running now."""
        return [e for e in self.entries.values() if e.started is not None]

    def reserved(self) -> list[JobEntry]:
        """Entries of the tasks taken and not started."""
        return [e for e in self.entries.values() if e.started is None]
