"""The task metrics collector fed with event dicts, and the registry rendered for a /metrics handler."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asyncq.events import NoEvents
from asyncq.events.fanout import FanOut, combine
from asyncq.message import Message
from asyncq.metrics import TaskMetrics, render


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = render(registry)
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def event(kind: str, uuid: str, timestamp: float, **fields: object) -> dict[str, object]:
    return {"type": kind, "uuid": uuid, "name": "t.add", "queue": "q", "timestamp": timestamp, **fields}


def test_feeding_events_counts_outcomes_runtimes_and_queue_waits() -> None:
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    for e in [
        event("task-sent", "a", 100.0),
        event("task-received", "a", 100.5),
        event("task-started", "a", 102.0),
        event("task-succeeded", "a", 102.25, runtime=0.25),
        event("task-received", "b", 103.0),
        event("task-started", "b", 103.0),  # no task-sent seen: no queue wait
        event("task-retried", "b", 103.5, exception_type="E"),
        event("task-failed", "c", 104.0, runtime=1.5),
        event("task-dead-lettered", "d", 105.0, reason="x"),
        {"type": "worker-heartbeat", "hostname": "w1", "timestamp": 106.0},
    ]:
        metrics.feed(e)
    metrics.set_queue_length("q", 7)
    metrics.set_fair_keys("q", 3)
    got = samples(registry)

    def total(outcome: str) -> float:
        return got[
            ("asyncq_tasks_total", frozenset({"task": "t.add", "queue": "q", "outcome": outcome}.items()))
        ]

    assert [total(o) for o in ("succeeded", "retried", "failed", "dead_lettered")] == [1, 1, 1, 1]
    assert got[("asyncq_tasks_received_total", frozenset({"task": "t.add", "queue": "q"}.items()))] == 2
    assert got[("asyncq_task_runtime_seconds_count", frozenset({"task": "t.add"}.items()))] == 2
    assert got[("asyncq_task_runtime_seconds_sum", frozenset({"task": "t.add"}.items()))] == 1.75
    assert got[("asyncq_task_queue_wait_seconds_count", frozenset({"queue": "q"}.items()))] == 1
    assert got[("asyncq_task_queue_wait_seconds_sum", frozenset({"queue": "q"}.items()))] == 2.0
    assert got[("asyncq_task_retries_total", frozenset({"task": "t.add"}.items()))] == 1
    assert got[("asyncq_dead_lettered_total", frozenset({"queue": "q"}.items()))] == 1
    assert got[("asyncq_queue_length", frozenset({"queue": "q"}.items()))] == 7
    assert got[("asyncq_fair_keys", frozenset({"queue": "q"}.items()))] == 3
    metrics.forget_queue("q")
    assert ("asyncq_queue_length", frozenset({"queue": "q"}.items())) not in samples(registry)
    assert ("asyncq_fair_keys", frozenset({"queue": "q"}.items())) not in samples(registry)


def test_render_speaks_openmetrics_when_asked() -> None:
    registry = CollectorRegistry()
    TaskMetrics(registry).task_received(Message(id="1", task="t.add", queue="q"))
    body, content_type = render(registry, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b'asyncq_tasks_received_total{queue="q",task="t.add"} 1.0' in body


def test_combine_calls_each_live_set_of_hooks_and_skips_the_empty_ones() -> None:
    first, second = TaskMetrics(CollectorRegistry()), TaskMetrics(CollectorRegistry())
    off = NoEvents()
    assert combine([off]) is off
    assert combine([off, first]) is first
    both = combine([off, first, second])
    assert isinstance(both, FanOut) and both.hooks == (first, second)
    message = Message(id="1", task="t.add", queue="q")
    both.task_succeeded(message, 0.5)
    for metrics in (first, second):
        assert (
            samples(metrics.registry)[
                ("asyncq_task_runtime_seconds_count", frozenset({"task": "t.add"}.items()))
            ]
            == 1
        )
