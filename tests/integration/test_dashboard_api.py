"""The dashboard's JSON API over HTTP (uvicorn, httpx) against a real worker process on Redis."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncq.dashboard.api import ENDPOINTS
from asyncq.exceptions import ConfigurationError
from tests.apps import dashboard_app
from tests.dashboard_support import client_app, redis_env, serve, start_worker
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


class Cluster:
    def __init__(self, env: dict[str, str], url: str, tmp: Path, worker: subprocess.Popen[bytes]) -> None:
        self.env = env
        self.url = url
        self.tmp = tmp
        self.worker = worker
        self.http = httpx.Client(base_url=url, timeout=10)
        csrf = self.http.get("/api/csrf").json()["csrf"]
        self.headers = {"X-CSRF-Token": csrf}

    def send(self, task: Any, *args: Any) -> str:
        app = client_app(self.env)

        async def go() -> str:
            try:
                return (await app.send_task(task.name, list(args))).id
            finally:
                await app.aclose()

        return asyncio.run(go())

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body or {}, headers=self.headers)

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                tasks = self.http.get("/api/tasks", params={"limit": 5}).json()["tasks"]
                pytest.fail(f"timed out after {timeout}s waiting for {what}; latest tasks: {tasks}")
            time.sleep(0.1)

    def task_in(self, task_id: str, *states: str) -> dict[str, Any] | None:
        response = self.http.get(f"/api/tasks/{task_id}")
        if response.status_code != 200:
            return None
        detail: dict[str, Any] = response.json()
        row = detail["task"] or {}
        return detail if row.get("state") in states else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    redis = require_service("redis")
    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("dashboard")
    env = redis_env(redis, prefix, tmp)
    worker = start_worker(env, tmp / "worker.log", "--concurrency", "4", "--hostname", "w1@dash")
    app = client_app(env)
    try:
        with serve(app, history_path=tmp / "history.sqlite3", poll_interval=0.3) as url:
            cluster = Cluster(env, url, tmp, worker)
            cluster.wait(lambda: cluster.get("/api/workers"), "the worker to register")
            yield cluster
            cluster.http.close()
    finally:
        worker.kill()
        worker.wait(10)
        asyncio.run(delete_prefix(redis, prefix))


def test_the_openapi_document_describes_every_endpoint(cluster: Cluster) -> None:
    document = cluster.get("/api/openapi.json")
    assert document["openapi"].startswith("3.")
    for endpoint in ENDPOINTS:
        assert endpoint.method.lower() in document["paths"][endpoint.path], endpoint.path


def test_tasks_appear_with_state_arguments_worker_and_result(cluster: Cluster) -> None:
    ids = [cluster.send(dashboard_app.add, n, 1) for n in range(5)]
    for n, task_id in enumerate(ids):
        detail = cluster.wait(lambda t=task_id: cluster.task_in(t, "SUCCESS"), f"task {task_id}")
        assert detail["task"]["args"] == [n, 1]
        assert detail["task"]["worker"] == "w1@dash"
        assert detail["task"]["runtime"] is not None
        assert detail["record"]["result"] == n + 1
    listing = cluster.get("/api/tasks", name=dashboard_app.add.name, state="SUCCESS", limit=100)
    assert set(ids) <= {task["id"] for task in listing["tasks"]}
    assert dashboard_app.add.name in listing["names"]
    found = cluster.get("/api/tasks", q=ids[0][:13])
    assert [task["id"] for task in found["tasks"]] == [ids[0]]
    assert cluster.get("/api/tasks", worker="nobody")["total"] == 0
    overview = cluster.get("/api/overview")
    assert overview["rates"]["finished"] >= 5
    assert overview["history"]["tasks"] >= 5


def test_a_failed_task_shows_its_exception_and_traceback(cluster: Cluster) -> None:
    task_id = cluster.send(dashboard_app.boom, "kaput")
    detail = cluster.wait(lambda: cluster.task_in(task_id, "FAILURE"), "the failure")
    assert detail["task"]["exc_type"].endswith("ValueError")
    assert detail["task"]["exc_message"] == "kaput"
    assert "ValueError: kaput" in detail["record"]["traceback"]
    retried = cluster.post(f"/api/tasks/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    again = retried.json()["details"]["id"]
    cluster.wait(lambda: cluster.task_in(again, "FAILURE"), "the retried task to fail again")


def test_actions_need_the_csrf_token(cluster: Cluster) -> None:
    refused = cluster.http.post("/api/queues/whatever/purge", json={})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]


def test_revoke_terminates_a_running_task(cluster: Cluster) -> None:
    task_id = cluster.send(dashboard_app.nap, 60)
    cluster.wait(lambda: cluster.task_in(task_id, "STARTED"), "the task to start")
    done = cluster.post(f"/api/tasks/{task_id}/revoke", {"terminate": True})
    assert done.status_code == 200, done.text
    detail = cluster.wait(lambda: cluster.task_in(task_id, "REVOKED"), "the revocation")
    assert detail["record"]["status"] == "REVOKED"


def test_a_dead_letter_is_listed_shown_and_requeued_to_completion(cluster: Cluster) -> None:
    ready = cluster.tmp / "ready"
    task_id = cluster.send(dashboard_app.fragile, str(ready))
    letters = cluster.wait(
        lambda: [d for d in cluster.get("/api/dead-letters") if d["id"] == task_id], "the dead letter"
    )
    assert letters[0]["reason"]
    assert cluster.get(f"/api/dead-letters/{task_id}")["task"] == dashboard_app.fragile.name
    cluster.wait(lambda: cluster.task_in(task_id, "DEAD_LETTERED"), "the dead-lettered state")
    ready.touch()
    requeued = cluster.post(f"/api/dead-letters/{task_id}/requeue")
    assert requeued.status_code == 200, requeued.text
    cluster.wait(lambda: cluster.task_in(task_id, "SUCCESS"), "the requeued task to succeed")
    assert cluster.post(f"/api/dead-letters/{task_id}/requeue").status_code == 404


def test_worker_actions_reach_the_worker(cluster: Cluster) -> None:
    resized = cluster.post("/api/workers/w1@dash/pool-resize", {"concurrency": 3})
    assert resized.status_code == 200, resized.text
    cluster.wait(
        lambda: cluster.get("/api/workers")[0]["stats"]["concurrency"] == 3, "the new concurrency to show"
    )
    assert cluster.post("/api/workers/w1@dash/pool-resize", {"concurrency": "x"}).status_code == 400
    limited = cluster.post(
        "/api/workers/w1@dash/rate-limit", {"task": dashboard_app.add.name, "rate": "100/s"}
    )
    assert limited.status_code == 200, limited.text
    added = cluster.post("/api/workers/w1@dash/add-consumer", {"queue": "dash-extra"})
    assert added.status_code == 200, added.text
    cluster.wait(
        lambda: "dash-extra" in cluster.get("/api/workers")[0]["stats"]["queues"], "the new queue to show"
    )
    cancelled = cluster.post("/api/workers/w1@dash/cancel-consumer", {"queue": "dash-extra"})
    assert cancelled.status_code == 200, cancelled.text
    assert cluster.post("/api/workers/nobody/pool-resize", {"concurrency": 2}).status_code == 504
    page = cluster.http.get("/workers")
    assert page.status_code == 200
    header = re.findall(r"<th[^>]*>([^<]*)</th>", page.text.split("</thead>", 1)[0])
    row = page.text.split('data-worker="w1@dash"', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[header.index("Held")] == "0"  # nothing waits on a rate limit or a key
    assert cluster.get("/api/workers")[0]["stats"]["held"] == 0


def test_queues_show_lengths_and_purge(cluster: Cluster) -> None:
    queue = cluster.env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    names = [q["name"] for q in cluster.get("/api/queues")]
    assert queue in names
    purged = cluster.post(f"/api/queues/{queue}-idle/purge")
    assert purged.status_code == 200, purged.text
    assert purged.json()["details"] == {"count": 0}


def test_scheduled_lists_the_beat_entries(cluster: Cluster) -> None:
    assert cluster.get("/api/scheduled") == []


def test_history_survives_a_restart_of_the_dashboard(cluster: Cluster, tmp_path: Path) -> None:
    task_id = cluster.send(dashboard_app.add, 40, 2)
    cluster.wait(lambda: cluster.task_in(task_id, "SUCCESS"), "the task")
    # A second dashboard on the same history file (the first still holds it: WAL allows that).
    app = client_app(cluster.env)
    with serve(app, history_path=cluster.tmp / "history.sqlite3") as url, httpx.Client(base_url=url) as http:
        detail = http.get(f"/api/tasks/{task_id}").json()
        assert detail["task"]["state"] == "SUCCESS"


def test_a_non_loopback_address_needs_a_login(cluster: Cluster, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs a login"):
        serve(client_app(cluster.env), host="0.0.0.0").__enter__()
    app = client_app(cluster.env, dashboard_token="s3cret-token")
    with (
        serve(app, host="0.0.0.0", history_path=tmp_path / "h.sqlite3") as url,
        httpx.Client(base_url=url) as http,
    ):
        assert http.get("/api/overview").status_code == 401
        page = http.get("/tasks")
        assert page.status_code == 303 and "/login?next=/tasks" in page.headers["location"]
        bearer = {"Authorization": "Bearer s3cret-token"}
        overview = http.get("/api/overview", headers=bearer)
        assert overview.status_code == 200
        assert "s3cret" not in overview.text
        wrong = http.get("/api/overview", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # The login form: a CSRF token first, then the token; the session cookie opens the pages.
        csrf = http.get("/login").cookies["asyncq_csrf"]
        refused = http.post("/login", data={"csrf": csrf, "token": "wrong"})
        assert refused.status_code == 401
        login = http.post("/login?next=/tasks", data={"csrf": csrf, "token": "s3cret-token"})
        assert login.status_code == 303 and login.headers["location"] == "/tasks"
        assert http.get("/tasks").status_code == 200
        assert http.get("/api/workers").status_code == 200


def _scrape(cluster: Cluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = cluster.http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_the_clusters_tasks_from_the_events(cluster: Cluster) -> None:
    name = dashboard_app.add.name

    def succeeded() -> float:
        return sum(
            value
            for (metric, labels), value in _scrape(cluster).items()
            if metric == "asyncq_tasks_total"
            and ("task", name) in labels
            and ("outcome", "succeeded") in labels
        )

    before = succeeded()
    ids = [cluster.send(dashboard_app.add, n, 2) for n in range(3)]
    for task_id in ids:
        cluster.wait(lambda t=task_id: cluster.task_in(t, "SUCCESS"), f"task {task_id}")
    cluster.wait(lambda: succeeded() >= before + 3, "the three successes in /metrics")
    samples = _scrape(cluster)
    assert any(metric == "asyncq_queue_length" for metric, _ in samples), sorted(samples)[:20]
