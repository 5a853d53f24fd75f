"""The worker's Prometheus endpoint: ``asyncq run --metrics-port``, scraped over HTTP and parsed.

A real worker process runs tasks of every outcome on SQLite and on Redis; the scraped
counters, histograms and gauges must match what it ran.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncq import App, State
from tests.acceptance.conftest import asyncq
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

pytest.importorskip("prometheus_client")

TIMEOUT = 30.0
T = "tests.apps.metrics_app."  # the task names
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until_scraped(port: int, check: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            samples = await asyncio.to_thread(scrape, port)
        except (urllib.error.URLError, ConnectionError):
            samples = {}
        if samples and check(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}; last scrape: {samples}")
        await asyncio.sleep(0.1)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    backend = f"sqlite:///{tmp_path / 'results.db'}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}", backend
        return
    redis_url = require_service("redis")
    prefix = unique_prefix()
    yield f"{redis_url}?key_prefix={prefix}", backend
    await delete_prefix(redis_url, prefix)


@pytest.fixture
def worker_process(
    urls: tuple[str, str],
    tmp_path: Path,
    start_worker: Callable[..., Any],
    store_env: dict[str, str],
) -> Iterator[tuple[int, str]]:
    """A worker process with metrics on a free port, one task at a time; (port, queue)."""
    queue = f"m-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **store_env,
        "ASYNCQ_BROKER_URL": urls[0],
        "ASYNCQ_RESULT_BACKEND": urls[1],
        "ASYNCQ_WORKER_METRICS_INTERVAL": "0.1",
        "ASYNCQ_WORKER_PREFETCH": "1",
    }
    proc = start_worker(
        "tests.apps.metrics_app:app", "-Q", queue, "-c", "1", "--metrics-port", str(port), env=env
    )
    yield port, queue
    if proc.poll() is not None:
        print(Path(proc.log_path).read_text())


async def test_a_scrape_counts_what_the_worker_ran(
    urls: tuple[str, str], worker_process: tuple[int, str], tmp_path: Path
) -> None:
    port, queue = worker_process
    await until_scraped(port, lambda s: ("asyncq_tasks_in_flight", frozenset()) in s, "the endpoint")
    producer = App("obs", broker=urls[0], backend=urls[1])
    try:
        opened = tmp_path / "open"
        send = producer.send_task
        held = [await send(T + "gate", [str(opened)], queue=queue)]
        held += [await send(T + "ok", [i], queue=queue) for i in range(4)]

        # The gate holds the only slot: one running, the other four queued or prefetched.
        def waiting(s: Samples) -> bool:
            behind = value(s, "asyncq_queue_length", queue=queue) + value(s, "asyncq_tasks_prefetched")
            return value(s, "asyncq_tasks_in_flight") == 1 and behind == 4

        samples = await until_scraped(port, waiting, "one task running and four waiting")
        assert value(samples, "asyncq_worker_concurrency") == 1
        opened.touch()
        others = [
            await send(name, queue=queue) for name in (T + "boom", T + "boom", T + "flaky", T + "refuse")
        ]
        for result in held + others:
            await result.get(timeout=TIMEOUT, propagate=False)
        assert [await r.state() for r in others] == [
            State.FAILURE,
            State.FAILURE,
            State.SUCCESS,
            State.FAILURE,
        ]

        expected = {
            (T + "ok", "succeeded"): 4,
            (T + "gate", "succeeded"): 1,
            (T + "boom", "failed"): 2,
            (T + "flaky", "retried"): 1,
            (T + "flaky", "succeeded"): 1,
            (T + "refuse", "rejected"): 1,
            (T + "refuse", "dead_lettered"): 1,
        }

        def counted(s: Samples) -> bool:
            return (
                all(
                    value(s, "asyncq_tasks_total", task=task, queue=queue, outcome=outcome) == n
                    for (task, outcome), n in expected.items()
                )
                and value(s, "asyncq_queue_length", queue=queue) == 0
            )

        samples = await until_scraped(port, counted, "the outcome counters")
        # Runs that succeeded or failed are timed; a retried or rejected one is not.
        runs = {T + "ok": 4, T + "gate": 1, T + "boom": 2, T + "flaky": 1}
        for task, n in runs.items():
            assert value(samples, "asyncq_task_runtime_seconds_count", task=task) == n, task
            assert value(samples, "asyncq_task_runtime_seconds_bucket", task=task, le="+Inf") == n
        started = 4 + 1 + 2 + 2 + 1  # flaky twice
        assert value(samples, "asyncq_task_queue_wait_seconds_count", queue=queue) == started
        assert value(samples, "asyncq_task_queue_wait_seconds_sum", queue=queue) > 0
        received = sum(value(samples, "asyncq_tasks_received_total", task=t, queue=queue) for t in runs)
        assert (
            received + value(samples, "asyncq_tasks_received_total", task=T + "refuse", queue=queue)
            == started
        )
        assert value(samples, "asyncq_task_retries_total", task=T + "flaky") == 1
        assert value(samples, "asyncq_dead_lettered_total", queue=queue) == 1
        assert value(samples, "asyncq_tasks_in_flight") == 0
        assert value(samples, "asyncq_tasks_prefetched") == 0
        assert ("asyncq_event_loop_lag_seconds", frozenset()) in samples
        assert value(samples, "process_resident_memory_bytes") > 0
    finally:
        await producer.aclose()


@pytest.mark.parametrize("taken", [True, False])
def test_an_unusable_metrics_port_stops_the_worker_with_one_line(
    store_env: dict[str, str], taken: bool
) -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1] if taken else 70000
        result = asyncq("run", "tests.apps.metrics_app:app", "--metrics-port", str(port), env=store_env)
    assert result.returncode == 2
    expected = (
        f"cannot serve metrics on 0.0.0.0:{port}: " if taken else "metrics port must be 0-65535, got 70000"
    )
    assert result.stderr.strip().startswith(f"Error: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
