"""asyncq: an asyncio-native distributed task queue.

The public API is re-exported here; everything else is importable from its module.
"""

from asyncq.__about__ import __version__
from asyncq.app import App
from asyncq.result import AsyncResult
from asyncq.schedules import crontab, interval
from asyncq.states import State
from asyncq.task import AsyncTask, Request, SyncTask, Task, current_task
from asyncq.worker.worker import Worker

__all__ = [
    "App",
    "AsyncResult",
    "AsyncTask",
    "Request",
    "State",
    "SyncTask",
    "Task",
    "Worker",
    "__version__",
    "crontab",
    "current_task",
    "interval",
]
