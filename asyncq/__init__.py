"""asyncq: an asyncio-native distributed task queue.

The public API is re-exported here; everything else is importable from its module.
"""

from asyncq.__about__ import __version__
from asyncq.app import App
from asyncq.canvas import Signature, chain, chord, group, signature
from asyncq.exceptions import ChordError
from asyncq.result import AsyncResult, GroupResult
from asyncq.schedules import crontab, interval
from asyncq.states import State
from asyncq.sync import SyncGroupResult, SyncResult
from asyncq.task import AsyncTask, Request, SyncTask, Task, current_task
from asyncq.worker.worker import Worker

__all__ = [
    "App",
    "AsyncResult",
    "AsyncTask",
    "ChordError",
    "GroupResult",
    "Request",
    "Signature",
    "State",
    "SyncGroupResult",
    "SyncResult",
    "SyncTask",
    "Task",
    "Worker",
    "__version__",
    "chain",
    "chord",
    "crontab",
    "current_task",
    "group",
    "interval",
    "signature",
]
