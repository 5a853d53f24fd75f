"""Where the test services live, and what to do when one is missing.

URLs come from ``ASYNCQ_TEST_<SERVICE>_URL`` (defaults: this machine's loopback servers).
A missing service skips its tests with the reason, unless ``ASYNCQ_TEST_REQUIRE_SERVICES=1``
(set by CI), which turns the skip into a failure: a skipped driver test is not a passing one.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "mongodb": "mongodb://127.0.0.1:27017/",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}


def service_url(service: str) -> str:
    """The URL of a test service, after the environment override."""
    return os.environ.get(f"ASYNCQ_TEST_{service.upper()}_URL", DEFAULT_URLS[service])


def require_service(service: str) -> str:
    """Return the service's URL if something listens there; otherwise skip (or fail in CI)."""
    url = service_url(service)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=2):
            pass
    except OSError as exc:
        missing(f"{service} is not reachable at {host}:{port} ({exc})")
    return url


def missing(reason: str) -> NoReturn:
    """Skip for a missing service or tool, except under ASYNCQ_TEST_REQUIRE_SERVICES=1 (CI): fail."""
    if os.environ.get("ASYNCQ_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + "; ASYNCQ_TEST_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)
