"""Settings: every setting is declared once here, with its type, default and meaning.

Precedence, highest first: an explicit argument (``App(broker=...)``) > a value set on
``app.conf`` (directly, from a dict or from an object) > the environment variable
``ASYNCQ_<SETTING_NAME>`` > the default. Names follow Celery's where Celery has one. A
misspelt setting is an error, with the closest known name suggested, rather than silently
ignored.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from asyncq.exceptions import ConfigurationError

__all__ = [
    "OTHER_ENV_VARS",
    "SETTINGS",
    "Conf",
    "Setting",
    "heartbeat_interval",
    "unknown_env_vars",
    "warn_unknown_env",
]

logger = logging.getLogger(__name__)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_auto_bool(text: str) -> bool | str:
    return "auto" if text.strip().lower() == "auto" else _parse_bool(text)


def _parse_optional_float(text: str) -> float | None:
    return None if text.strip().lower() in {"", "none", "null"} else float(text)


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in {"", "none", "null"} else int(text)


def _parse_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list):
            raise ValueError("expected a JSON list")
        return [str(v) for v in value]
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its name, default, how to read it from the environment, and what it does."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str

    @property
    def env_var(self) -> str:
        """The environment variable that sets it."""
        return f"ASYNCQ_{self.name.upper()}"


_S = Setting
#: Every setting asyncq reads, by name.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        _S("broker_url", None, str, "Broker URL; unset means the embedded SQLite file (see docs)."),
        _S("result_backend", None, str, "Result backend URL; unset means the same SQLite file."),
        _S("broker_transport_options", {}, _parse_dict, "Options passed to the broker driver."),
        _S(
            "control_url",
            None,
            str,
            "Store of presence, control, revocations and events when not the broker (e.g. redis:// "
            "beside an sqs:// or kafka:// broker); None: the broker's own.",
        ),
        _S(
            "outbox_url",
            None,
            str,
            "postgresql:// URL of the transactional outbox: enqueue(..., connection=conn) on any "
            "broker writes there in the caller's transaction; workers relay it (docs/outbox.md).",
        ),
        _S("result_backend_transport_options", {}, _parse_dict, "Options passed to the backend driver."),
        _S(
            "broker_connection_timeout",
            10.0,
            _parse_optional_float,
            "Seconds a broker or backend connect may take (handshake included) before it fails "
            "naming the address; None leaves each driver's own default.",
        ),
        _S(
            "broker_connection_retry_on_startup",
            "auto",
            _parse_auto_bool,
            "Whether a worker whose broker or backend cannot be reached when it starts (connection "
            "refused or reset, host name not resolved) waits and tries again, as Celery's worker "
            "does. auto: only a worker that owns its process (asyncq run, Worker.run()); an "
            "embedded one fails at once. A server that answers wrongly is never retried.",
        ),
        _S(
            "broker_connection_max_retries",
            100,
            _parse_optional_int,
            "Start-up connect attempts after the first before a worker gives up; 0 or None: no limit.",
        ),
        _S("task_default_queue", "default", str, "Queue of tasks that name none."),
        _S("celery_queues", [], _parse_list, "Queues of Celery protocol messages a worker also consumes."),
        _S("celery_broker_url", None, str, "Redis/RabbitMQ URL of the Celery queues; unset: broker_url."),
        _S("celery_result_backend", None, str, "Where Celery clients read results: Redis URL or rpc://."),
        _S("celery_task_map", {}, _parse_dict, "Celery task name -> asyncq task name (default: same)."),
        _S("task_routes", {}, _parse_dict, "Task name -> queue name, applied before the default queue."),
        _S("task_serializer", "json", str, "Serializer of task arguments: json, msgpack or pickle."),
        _S("result_serializer", "json", str, "Serializer of task results."),
        _S("accept_content", ["json"], _parse_list, "Content types a worker decodes; add pickle knowingly."),
        _S("result_expires", 86400.0, _parse_optional_float, "Seconds results are kept; None keeps them."),
        _S("task_acks_late", True, _parse_bool, "Ack after the task finishes (at-least-once)."),
        _S("task_ignore_result", False, _parse_bool, "Do not store results unless a task asks to."),
        _S("task_track_started", False, _parse_bool, "Store the STARTED state when a task begins."),
        _S("task_always_eager", False, _parse_bool, "Run tasks inline at delay/apply_async time (tests)."),
        _S("task_eager_propagates", False, _parse_bool, "Eager tasks raise their exception at apply time."),
        _S("task_time_limit", None, _parse_optional_float, "Default hard time limit, seconds."),
        _S("task_soft_time_limit", None, _parse_optional_float, "Default soft time limit, seconds."),
        _S("task_default_priority", None, _parse_optional_int, "Priority 0-9 of tasks that name none."),
        _S(
            "task_default_rate_limit_scope",
            "global",
            str,
            "Where a task's rate_limit holds when it names no rate_limit_scope: global (all "
            "workers share it, in the broker's store) or worker (each worker its own).",
        ),
        _S(
            "flow_lease",
            30.0,
            float,
            "Seconds a concurrency-key slot stays held without renewal (its worker renews it "
            "while the task runs); a dead worker's slots come back after it.",
        ),
        _S(
            "flow_poll_interval",
            0.2,
            float,
            "Seconds between looks at a full concurrency key whose slots other workers hold "
            "(a slot freed in this worker is seen at once).",
        ),
        _S("task_default_retry_delay", 180.0, float, "Seconds before a retry when none is given."),
        _S("task_max_retries", 3, _parse_optional_int, "Default max_retries of a task."),
        _S(
            "task_unique_ttl",
            3600.0,
            float,
            "Seconds a unique task's lock lasts at most (it is released when the task finishes).",
        ),
        _S(
            "worker_max_deliveries",
            5,
            int,
            "Crashes while running isolated after which a redelivered message is dead-lettered.",
        ),
        _S("worker_concurrency", 100, int, "Tasks a worker runs at once (coroutines, threads included)."),
        _S(
            "worker_prefetch",
            None,
            _parse_optional_int,
            "Unacked messages a worker holds; default concurrency (twice that when a task has a "
            "concurrency key).",
        ),
        _S(
            "worker_thread_pool_size",
            None,
            _parse_optional_int,
            "Threads for sync tasks; default min(32, cpus+4).",
        ),
        _S(
            "worker_process_pool_size",
            None,
            _parse_optional_int,
            "Processes for executor='process' tasks; default cpus.",
        ),
        _S("worker_shutdown_timeout", 30.0, float, "Seconds in-flight tasks get to finish on shutdown."),
        _S(
            "worker_gc_freeze",
            "auto",
            _parse_auto_bool,
            "While a worker runs, the objects alive at its start-up are left out of the cyclic "
            "garbage collector's passes (gc.freeze(), undone when it stops), and its youngest "
            "generation is collected every 7,000 allocations rather than 700 (a higher threshold "
            "set beforehand stays; restored when it stops). auto: only in a "
            "worker that owns its process (asyncq run, Worker.run()), never in a host app that "
            "embeds one; true or false to decide for every worker.",
        ),
        _S("worker_loop", "auto", str, "Event loop: auto (uvloop if installed), asyncio or uvloop."),
        _S(
            "worker_send_task_events",
            False,
            _parse_bool,
            "Workers send task and worker events (asyncq run -E); see docs/monitoring.md.",
        ),
        _S("task_send_sent_event", False, _parse_bool, "Producers send a task-sent event per task."),
        _S("events_include_args", False, _parse_bool, "Task args and kwargs in task-sent/-received events."),
        _S("event_flush_interval", 0.1, float, "Seconds events gather before they are sent as one batch."),
        _S("event_history_limit", 10_000, int, "Event batches the bus keeps for late readers."),
        _S(
            "event_history_bytes",
            64 * 1024 * 1024,
            int,
            "Redis: bytes of event batches its stream keeps, about (beside event_history_limit).",
        ),
        _S(
            "worker_metrics_port",
            None,
            _parse_optional_int,
            "Port of the worker's Prometheus endpoint (asyncq run --metrics-port); None: no metrics.",
        ),
        _S(
            "worker_metrics_host",
            "0.0.0.0",  # noqa: S104 - Prometheus scrapes from another host; metrics hold no secrets
            str,
            "Address the worker's Prometheus endpoint binds to.",
        ),
        _S(
            "worker_metrics_interval",
            5.0,
            float,
            "Seconds between the worker's samples of queue lengths and event-loop lag for metrics.",
        ),
        _S(
            "task_send_sent_time",
            True,
            _parse_bool,
            "Producers stamp each message's send time (header sent_at), for the queue-wait metric.",
        ),
        _S(
            "tracing",
            False,
            _parse_bool,
            "OpenTelemetry spans for publishing and running tasks (asyncq[tracing]).",
        ),
        _S(
            "event_heartbeat_interval",
            None,
            _parse_optional_float,
            "Old name of worker_heartbeat_interval, used when only it is set; None: follow that.",
        ),
        _S(
            "worker_heartbeat_interval",
            2.0,
            float,
            "Seconds between a worker's heartbeats (presence record and worker-heartbeat event).",
        ),
        _S("worker_heartbeat_misses", 3, int, "Missed heartbeats after which a worker counts as lost."),
        _S("worker_revoke_expires", 10800.0, float, "Seconds a revocation is kept (and honoured)."),
        _S("timezone", "UTC", str, "Time zone of crontab schedules."),
        _S(
            "beat_schedule",
            {},
            _parse_dict,
            "Periodic tasks: name -> {task, schedule, args, kwargs, options, catch_up}.",
        ),
        _S("security_key", None, _parse_list, "HMAC secret(s) signing messages; first signs, any verifies."),
        _S("security_private_key", None, str, "Ed25519 private key signing messages (PEM or a file path)."),
        _S("security_public_keys", [], _parse_list, "Ed25519 public keys whose signatures workers accept."),
        _S("security_encryption_key", None, _parse_list, "AES-256 key(s), base64; the first encrypts."),
        _S("security_encrypt", False, _parse_bool, "Encrypt every task's arguments and results."),
        _S("message_max_bytes", 1048576, _parse_optional_int, "Largest message accepted (enqueue, receive)."),
        _S("message_max_depth", 64, _parse_optional_int, "Deepest nesting of containers in task arguments."),
        _S(
            "beat_refresh_interval",
            5.0,
            float,
            "Seconds between a scheduler's re-reads of entries stored by other processes.",
        ),
        _S("dashboard_token", None, str, "Token to log in to the dashboard (or as a bearer token)."),
        _S("dashboard_username", None, str, "User to log in to the dashboard as (with dashboard_password)."),
        _S("dashboard_password", None, str, "Password of dashboard_username."),
        _S(
            "dashboard_login_attempts",
            5,
            int,
            "Failed dashboard logins allowed per client address or user per window (0: no limit).",
        ),
        _S("dashboard_login_window", 60.0, float, "Seconds a failed dashboard login counts for."),
        _S("dashboard_history_path", None, str, "SQLite file of the dashboard's task history."),
        _S("dashboard_history_limit", 100_000, int, "Tasks the dashboard's history keeps at most."),
        _S("dashboard_history_expires", 604800.0, float, "Seconds a task stays in the dashboard's history."),
    )
}


#: ``ASYNCQ_*`` variables that are not settings: the command line's options read them.
OTHER_ENV_VARS: frozenset[str] = frozenset(
    {
        "ASYNCQ_APP",
        "ASYNCQ_QUEUES",
        "ASYNCQ_LOG_LEVEL",
        "ASYNCQ_LOG_FORMAT",
        "ASYNCQ_BEAT",
        "ASYNCQ_WORKER_HOSTNAME",
        "ASYNCQ_RELOAD",
    }
)
# Variables under these prefixes belong to asyncq's test suite and benchmarks (ASYNCQ_TEST_REDIS_URL, ...).
_OTHER_ENV_PREFIXES = ("ASYNCQ_TEST_", "ASYNCQ_BENCH_")


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Each ``ASYNCQ_*`` variable asyncq does not read, with the closest known name (or None)."""
    environ = os.environ if environ is None else environ
    known = {setting.env_var for setting in SETTINGS.values()} | OTHER_ENV_VARS
    unknown = []
    for name in sorted(environ):
        if name.startswith("ASYNCQ_") and name not in known and not name.startswith(_OTHER_ENV_PREFIXES):
            # Compare what follows the prefix: every name shares "ASYNCQ_", which would match anything.
            close = difflib.get_close_matches(name[7:], [k[7:] for k in known], n=1)
            unknown.append((name, f"ASYNCQ_{close[0]}" if close else None))
    return unknown


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> None:
    """Log a warning for each ``ASYNCQ_*`` variable that is no setting: a typo is otherwise silent."""
    for name, close in unknown_env_vars(environ):
        hint = f"; did you mean {close}?" if close else "; see docs/configuration.md for the settings"
        logger.warning("environment variable %s is not an asyncq setting and is ignored%s", name, hint)


class Conf(MutableMapping[str, Any]):
    """The configuration of one app: a mapping with attribute access.

    ``conf.task_default_queue`` and ``conf["task_default_queue"]`` are the same. Reading an
    unset setting gives the environment's value, else a copy of the default.
    """

    __slots__ = ("_environ", "_resolved", "_values", "_version")

    def __init__(
        self, values: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        object.__setattr__(self, "_values", {})
        # Values read from the environment or defaults, resolved once: reads are on the hot
        # path, and a resolved mutable default must keep in-place edits (conf.task_routes[k] = v).
        object.__setattr__(self, "_resolved", {})
        object.__setattr__(self, "_environ", os.environ if environ is None else environ)
        # Bumped by every assignment: what is derived from settings once (a task's send
        # defaults) knows when to derive it again.
        object.__setattr__(self, "_version", 0)
        if environ is None:
            warn_unknown_env()  # once per app, like Celery's warnings for unknown settings
        if values:
            self.update(values)

    @staticmethod
    def _setting(key: str) -> Setting:
        try:
            return SETTINGS[key]
        except KeyError:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown setting {key!r}{hint}") from None

    def __getitem__(self, key: str) -> Any:
        # Membership tests, not try/except: a raised KeyError costs more than the lookups.
        values = self._values
        if key in values:
            return values[key]
        resolved = self._resolved
        if key in resolved:
            return resolved[key]
        setting = self._setting(key)
        raw = self._environ.get(setting.env_var)
        if raw is not None:
            try:
                value = setting.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"environment variable {setting.env_var}={raw!r} is invalid: {exc}"
                ) from None
        else:
            value = copy.deepcopy(setting.default)
        self._resolved[key] = value
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._setting(key)
        self._values[key] = value
        self._resolved.pop(key, None)
        object.__setattr__(self, "_version", self._version + 1)

    def __delitem__(self, key: str) -> None:
        self._setting(key)
        self._values.pop(key, None)
        self._resolved.pop(key, None)
        object.__setattr__(self, "_version", self._version + 1)

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def __len__(self) -> int:
        return len(SETTINGS)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in SETTINGS:
            try:
                self._setting(key)
            except ConfigurationError as exc:
                raise AttributeError(str(exc)) from None
        return self[key]

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def is_set(self, key: str) -> bool:
        """True if the setting was given explicitly or through the environment."""
        return key in self._values or self._setting(key).env_var in self._environ

    def from_object(self, obj: object | str) -> None:
        """Load every known setting found as an attribute of ``obj`` (or of the module path)."""
        if isinstance(obj, str):
            from asyncq._utils import import_string

            try:
                obj = import_string(obj) if ":" in obj else __import__(obj, fromlist=["_"])
            except ImportError as exc:
                raise ConfigurationError(f"cannot load configuration from {obj!r}: {exc}") from exc
        for name in SETTINGS:
            if hasattr(obj, name):
                self[name] = getattr(obj, name)

    def __repr__(self) -> str:
        from asyncq._utils import redact_settings

        return f"Conf({redact_settings(self._values)!r})"


def settings_markdown() -> str:
    """The settings as a Markdown table (docs/configuration.md embeds it; a test keeps them in step)."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS.values():
        rows.append(f"| `{setting.name}` | `{setting.env_var}` | `{setting.default!r}` | {setting.doc} |")
    return "\n".join(rows) + "\n"


def heartbeat_interval(conf: Conf) -> float:
    """Seconds between a worker's heartbeats: ``worker_heartbeat_interval``, or its old name.

    ``event_heartbeat_interval`` (the name the worker-heartbeat event had) counts only when it
    is set and ``worker_heartbeat_interval`` is not: one interval serves presence and events.
    """
    old = conf.event_heartbeat_interval
    if old is not None and not conf.is_set("worker_heartbeat_interval"):
        return float(old)
    return float(conf.worker_heartbeat_interval)
