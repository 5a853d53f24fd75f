"""The asyncq error tree.

Every error asyncq raises on purpose derives from :class:`AsyncqError`, except the
control-flow signals, which sit outside it so that task code catching ``Exception``
broadly still cannot swallow them by accident... unless it really wants to::

    AsyncqError
    ├── ConfigurationError            bad setting, bad URL, unknown scheme, bad cron
    │   └── MissingDependencyError    an optional extra is not installed
    ├── BrokerError
    │   └── BrokerConnectionError
    ├── BackendError
    │   └── BackendConnectionError
    ├── SerializationError            cannot encode / decode / content type refused
    │   ├── SignatureError            a message is unsigned or its signature does not verify
    │   └── MessageTooLargeError      a message is over message_max_bytes
    ├── NotRegistered                 no task of that name in this app
    ├── TaskError                     a task failed remotely and its type is not importable
    ├── TaskRevokedError              the task was revoked or expired before it ran
    ├── ChordError                    a chord's header task failed, so its callback did not run
    ├── MaxRetriesExceededError
    ├── TimeLimitExceeded             hard time limit hit
    ├── WorkerLostError               the message was delivered max_deliveries times without finishing
    ├── BlockingCallError             a blocking (sync API) call in a thread that runs an event loop
    └── TimeoutError                  waiting for a result timed out (also a builtin TimeoutError)

    SoftTimeLimitExceeded (Exception)  raised inside a task at its soft time limit
    Retry (BaseException)              raised by ``task.retry()``; the worker schedules a retry
    Reject (BaseException)             raised by a task to dead-letter or requeue its message
"""

from __future__ import annotations

import builtins

__all__ = [
    "AsyncqError",
    "BackendConnectionError",
    "BackendError",
    "BlockingCallError",
    "BrokerConnectionError",
    "BrokerError",
    "ChordError",
    "ConfigurationError",
    "MaxRetriesExceededError",
    "MissingDependencyError",
    "NotRegistered",
    "Reject",
    "Retry",
    "MessageTooLargeError",
    "SerializationError",
    "SignatureError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class AsyncqError(Exception):
    """Base class of every asyncq error."""

    def __init__(self, *args: object) -> None:
        # The class docstring's first line doubles as the default message.
        if not args and self.__doc__:
            args = (self.__doc__.strip().splitlines()[0],)
        super().__init__(*args)


class ConfigurationError(AsyncqError):
    """The configuration is invalid."""


class MissingDependencyError(ConfigurationError):
    """An optional dependency is not installed."""

    @classmethod
    def for_extra(cls, package: str, extra: str) -> MissingDependencyError:
        """Build the error that names the missing package and the extra that installs it."""
        return cls(f"{package} is not installed; install it with: pip install 'asyncq[{extra}]'")


class BrokerError(AsyncqError):
    """The broker failed to carry out an operation."""


class BrokerConnectionError(BrokerError):
    """The broker could not be reached."""


class BackendError(AsyncqError):
    """The result backend failed to carry out an operation."""


class BackendConnectionError(BackendError):
    """The result backend could not be reached."""


class SerializationError(AsyncqError):
    """A value or message could not be encoded or decoded."""


class SignatureError(SerializationError):
    """The message is unsigned, or its signature does not verify."""


class MessageTooLargeError(SerializationError):
    """The message is larger than the message_max_bytes setting allows."""


class NotRegistered(AsyncqError, KeyError):
    """No task is registered under that name."""

    def __str__(self) -> str:
        # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class TaskError(AsyncqError):
    """A task failed with an exception whose type cannot be rebuilt here.

    Attributes:
        exc_type: the remote exception's qualified type name, e.g. ``"mylib.errors.Boom"``.
        exc_message: the remote ``str(exc)``.
        remote_traceback: the formatted traceback from the worker.
    """

    def __init__(self, exc_type: str = "", exc_message: str = "", remote_traceback: str = "") -> None:
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback
        super().__init__(f"{exc_type}: {exc_message}" if exc_type else exc_message or "task failed")


class TaskRevokedError(AsyncqError):
    """The task was revoked (or expired) and did not run."""


class ChordError(AsyncqError):
    """A task in the chord's header failed, so the chord's callback did not run.

    Attributes:
        task_id: the id of the header task that failed (None when unknown).
    """

    def __init__(self, message: str | None = None, task_id: str | None = None) -> None:
        self.task_id = task_id
        if message is None:
            super().__init__()
        elif task_id is None:
            super().__init__(message)
        else:
            super().__init__(message, task_id)  # both in args, so a waiting process rebuilds both

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MaxRetriesExceededError(AsyncqError):
    """The task asked to be retried more times than its max_retries allows."""


class TimeLimitExceeded(AsyncqError):
    """The task ran past its hard time limit and was stopped."""


class WorkerLostError(AsyncqError):
    """The task's worker died (or the message kept failing to finish) before it completed."""


class BlockingCallError(AsyncqError, RuntimeError):
    """A blocking call was made in a thread that runs an event loop; await the async form instead."""


class TimeoutError(AsyncqError, builtins.TimeoutError):  # noqa: A001 - the public name is intended
    """Timed out waiting for a task result."""


class SoftTimeLimitExceeded(Exception):
    """The task ran past its soft time limit; it may catch this to clean up."""


class Retry(BaseException):
    """Signal raised by ``task.retry()``: the worker re-schedules the task.

    Attributes:
        exc: the exception that caused the retry, if any.
        when: seconds until the retry runs.
    """

    def __init__(
        self, message: str | None = None, exc: BaseException | None = None, when: float | None = None
    ) -> None:
        self.exc = exc
        self.when = when
        super().__init__(message or (f"Retry in {when}s" + (f": {exc!r}" if exc else "")))


class Reject(BaseException):
    """Signal raised by a task to reject its message.

    With ``requeue=False`` (the default) the message goes to the dead-letter queue with
    ``reason``; with ``requeue=True`` it is returned to its queue.
    """

    def __init__(self, reason: str = "rejected by task", requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason)
