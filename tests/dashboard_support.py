"""Serving a dashboard from a test: uvicorn on a free port in a thread, with its own event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from asyncq import App
from asyncq.dashboard.server import build

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.dashboard_app:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """The environment of the dashboard app's workers and clients, under its own key prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ASYNCQ_BROKER_URL=f"{redis_url}?key_prefix={prefix}",
        ASYNCQ_RESULT_BACKEND=f"{redis_url}?key_prefix={prefix}",
        ASYNCQ_TASK_DEFAULT_QUEUE=f"dash-{uuid.uuid4().hex[:8]}",
        ASYNCQ_WORKER_HEARTBEAT_INTERVAL="0.5",
        ASYNCQ_EVENTS_INCLUDE_ARGS="1",
        ASYNCQ_TASK_SEND_SENT_EVENT="1",
        ASYNCQ_EVENT_FLUSH_INTERVAL="0.05",
    )
    return env


def client_app(env: dict[str, str], **config: Any) -> App:
    """An app (producer, dashboard) configured like the workers."""
    conf = {
        "task_default_queue": env["ASYNCQ_TASK_DEFAULT_QUEUE"],
        "worker_heartbeat_interval": 0.5,
        "events_include_args": True,
        "task_send_sent_event": True,
        "event_flush_interval": 0.05,
        **config,
    }
    return App(
        "dashboard-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"], config=conf
    )


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``asyncq run -E`` for the dashboard app."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "asyncq", "run", APP, "-E", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def serve(app: App, *, host: str = "127.0.0.1", **options: Any) -> Iterator[str]:
    """Serve ``app``'s dashboard (as ``asyncq dashboard`` would); yield its base URL."""
    port = free_port()
    web = build(app, host, **options)
    config = uvicorn.Config(web, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        yield f"http://{shown}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
