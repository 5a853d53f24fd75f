"""Small pure helpers shared across layers: imports by path, clocks, durations, backoff."""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = [
    "backoff_delay",
    "describe_error",
    "import_string",
    "new_id",
    "now",
    "redact_settings",
    "redact_url",
    "to_epoch",
    "to_seconds",
    "utcnow",
    "utcnow_iso",
]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (``None``: nothing to do) and wait until it has finished, quietly."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# The version (4) and variant (RFC 4122) bits of a UUID4, over 128 random bits.
_UUID4_KEEP: Final = 0xFFFFFFFFFFFF0FFF3FFFFFFFFFFFFFFF
_UUID4_SET: Final = 0x00000000000040008000000000000000
# Random bytes for ids, read from the OS a block at a time: one getrandom() call per 256 ids
# instead of one per id. A deque of 16-byte chunks: popleft is atomic, so threads calling
# new_id at once never share one.
_BLOCK: Final = 16 * 256
_chunks: deque[bytes] = deque()

if hasattr(os, "register_at_fork"):  # not on Windows
    # A forked child must not hand out the ids its parent would give next.
    os.register_at_fork(after_in_child=_chunks.clear)


def _random16() -> bytes:
    try:
        return _chunks.popleft()
    except IndexError:
        block = os.urandom(_BLOCK)
        _chunks.extend([block[i : i + 16] for i in range(16, _BLOCK, 16)])
        return block[:16]


def new_id(urandom: Callable[[int], bytes] | None = None) -> str:
    """Return a fresh task or message id (a UUID4 string, as Celery uses).

    ``str(uuid.uuid4())`` spelled out: the same string of the same kind of random bytes, at a
    fraction of the cost (no UUID object, os.urandom read in blocks); every enqueue makes one.
    ``urandom`` (tests): take the 16 bytes from it instead.
    """
    raw = _random16() if urandom is None else urandom(16)
    h = (int.from_bytes(raw) & _UUID4_KEEP | _UUID4_SET).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now() -> float:
    """Wall-clock time in seconds since the epoch: the clock every stored deadline uses."""
    return time.time()


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


_second: tuple[int, str] = (-1, "")  # the last whole second utcnow_iso() formatted


def utcnow_iso() -> str:
    """``utcnow().isoformat()``, several times cheaper: the date and time of day are formatted
    once per second (a worker writes one such stamp per finished task)."""
    global _second
    current = time.time()
    whole = int(current)
    micro = int((current - whole) * 1e6)
    cached, prefix = _second
    if whole != cached:
        prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    return f"{prefix}.{micro:06d}+00:00" if micro else f"{prefix}+00:00"


def import_string(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` (or ``"package.module.attr"``) and return the object.

    Raises:
        ImportError: the module cannot be imported or the attribute does not exist; the
            message names the path.
    """
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ImportError(f"{path!r} is not an import path like 'package.module:attribute'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def to_seconds(value: float | timedelta | None) -> float | None:
    """Normalise a duration given as seconds or a timedelta to float seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected seconds (int or float) or a timedelta, got {type(value).__name__}")
    return float(value)


def to_epoch(value: datetime | float | timedelta | None, *, relative_to: float | None = None) -> float | None:
    """Turn an aware datetime, or a relative duration, into epoch seconds.

    Numbers and timedeltas are durations from ``relative_to`` (default: now). Naive datetimes
    are refused: silently assuming a zone is how tasks end up running an hour late.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"datetime {value.isoformat()} is naive; give an aware datetime (tzinfo set)")
        return value.timestamp()
    seconds = to_seconds(value)
    assert seconds is not None
    return (now() if relative_to is None else relative_to) + seconds


def backoff_delay(
    retries: int,
    *,
    base: float = 1.0,
    maximum: float = 600.0,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with a cap and full jitter (Celery's retry_backoff semantics).

    The n-th retry waits ``min(maximum, base * 2**n)`` seconds, and with ``jitter`` a uniform
    random fraction of that, so that many tasks failing together do not retry in lock step.
    """
    delay: float = min(maximum, base * 2.0 ** max(0, retries))
    if jitter:
        delay = float((rng or random).uniform(0, delay))
    return delay


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info or a ``*password`` query option) as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None and "password" not in parts.query:
        return url  # unchanged: urlunsplit would also rewrite sqlite:/// as sqlite:/
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}")
    if "password" in parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query="&".join(f"{k}={'***' if 'password' in k else v}" for k, v in query))
    return urlunsplit(parts)


def describe_error(exc: BaseException, *, with_type: bool = False) -> str:
    """``str(exc)`` for log lines and messages, or the exception's type when that is empty.

    Many exceptions (``TimeoutError()``, ``CancelledError()``) have no message; a line such
    as "lease renewal failed ()" would hide what happened. ``with_type`` always names it.
    """
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the log line
        text = ""
    name = type(exc).__name__
    if not text:
        return name
    return f"{name}: {text}" if with_type else text


def redact_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Settings fit to print: keys as ``***`` and URLs without their passwords."""
    shown: dict[str, Any] = {}
    for name, value in values.items():
        secret = name.startswith("security_") and name != "security_encrypt"
        if (secret or name in ("dashboard_token", "dashboard_password")) and value:
            shown[name] = "***"
        elif isinstance(value, str) and "://" in value:
            shown[name] = redact_url(value)
        elif isinstance(value, dict):  # transport options: password, sentinel_password, ssl_password
            shown[name] = {k: "***" if "password" in str(k) else v for k, v in value.items()}
        else:
            shown[name] = value
    return shown
