"""The Django example project on the real PostgreSQL and Redis, with ``manage.py asyncq_worker`` running it.

The project (examples/django_project) is set up in this process on a database made for this
run; its worker runs as a subprocess, as in production. Covered: settings -> App,
autodiscovery, ``enqueue_on_commit`` (never sent before the commit, never after a rollback),
the views end to end, and Django's task framework on asyncq (``AsyncqBackend``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from asyncq import App
from asyncq.exceptions import ConfigurationError
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service, service_url

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

#: An App whose results go back over AMQP to the sender only (never connected here).
RPC_APP = App("rpc-results", broker="amqp://guest:guest@127.0.0.1:5672/")
#: An App a project made itself, named by settings.ASYNCQ_APP.
OWN_APP = App("own")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"


def poll(predicate: Callable[[], bool], timeout: float = 60) -> None:
    """Wait until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def admin_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(service_url("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def project() -> Iterator[dict[str, str]]:
    """The example project, set up in this process on a fresh database; yields the worker's environment."""
    pytest.importorskip("django")
    require_service("postgres")
    redis_url = require_service("redis")
    prefix = unique_prefix()
    database = f"asyncq_django_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{database}"')
    env = {
        "DJANGO_SETTINGS_MODULE": "shopsite.settings",
        "EXAMPLE_DB_NAME": database,
        "ASYNCQ_BROKER_URL": f"{redis_url}?key_prefix={prefix}",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT))
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
        yield {**worker_env, **env, "PYTHONPATH": str(ROOT)}
    finally:
        from django.db import connections

        connections.close_all()
        admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        import asyncio

        asyncio.run(delete_prefix(redis_url, prefix))
        sys.path.remove(str(PROJECT))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py asyncq_worker OPTIONS`` until the block ends; then SIGTERM, and it must exit 0."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "asyncq_worker", *options],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(
    project: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The project's worker on the default and reports queues, for the whole module."""
    log_path = tmp_path_factory.mktemp("django-worker") / "worker.log"
    with running_worker(project, log_path, "-Q", "default,reports", "-c", "8") as proc:
        yield proc


def purge(queue: str) -> int:
    """Drop and count the messages waiting in ``queue`` (through the sync facade)."""
    from asyncq.contrib.django import get_app
    from asyncq.sync import blocking

    app = get_app()
    return blocking(app, app.purge(queue), timeout=60)


class Rollback(Exception):
    """Raised to roll a transaction back."""


@contextmanager
def rolled_back() -> Iterator[None]:
    """A transaction (or savepoint) whose block runs to its end and is then rolled back."""
    from django.db import transaction

    try:
        with transaction.atomic():
            yield
            raise Rollback
    except Rollback:
        pass


# -- settings and start-up -----------------------------------------------------------------------


def test_settings_build_the_app_and_tasks_are_discovered(project: dict[str, str]) -> None:
    from asyncq.contrib.django import app, get_app

    assert app is get_app()
    assert app.main == "shopsite"  # the settings module's package
    assert app.conf.broker_url == project["ASYNCQ_BROKER_URL"]  # from the ASYNCQ dict
    assert app.conf.worker_concurrency == 20  # from ASYNCQ_WORKER_CONCURRENCY
    assert app.conf.task_default_retry_delay == 1
    assert "shop.tasks.send_confirmation" in app.tasks  # shop/tasks.py was autodiscovered
    assert {"asyncq.django.run", "asyncq.django.run_sync"} <= set(app.tasks)


def test_settings_asyncq_app_names_an_app_of_the_project(project: dict[str, str]) -> None:
    from django.test import override_settings

    from asyncq.contrib.django.conf import get_app

    build = get_app.__wrapped__  # not the process's cached App
    with override_settings(ASYNCQ_APP="tests.integration.test_django:OWN_APP"):
        assert build() is OWN_APP
    assert OWN_APP.conf.worker_concurrency == 20  # the Django settings were applied to it
    with (
        override_settings(ASYNCQ_APP="tests.integration.test_django:PROJECT"),
        pytest.raises(ConfigurationError, match="not an asyncq App"),
    ):
        build()


def test_bad_settings_are_named() -> None:
    from asyncq.contrib.django.conf import app_settings

    with pytest.raises(
        ConfigurationError, match=r"settings.ASYNCQ\['broker_ulr'\].*did you mean 'broker_url'"
    ):
        app_settings(SimpleNamespace(ASYNCQ={"broker_ulr": "redis://"}))
    with pytest.raises(
        ConfigurationError, match=r"settings\.ASYNCQ_WORKER_CONCURENCY is not an asyncq setting"
    ):
        app_settings(SimpleNamespace(ASYNCQ_WORKER_CONCURENCY=3))
    with pytest.raises(ConfigurationError, match="'task_default_queue' is given twice"):
        app_settings(SimpleNamespace(ASYNCQ={"TASK_DEFAULT_QUEUE": "a"}, ASYNCQ_TASK_DEFAULT_QUEUE="b"))
    with pytest.raises(ConfigurationError, match=r"settings\.ASYNCQ must be a dict"):
        app_settings(SimpleNamespace(ASYNCQ=["broker_url"]))
    assert app_settings(SimpleNamespace(ASYNCQ={"Broker_URL": "memory://"}, ASYNCQ_APP="x:y")) == {
        "broker_url": "memory://"
    }


def test_the_backend_needs_an_app_with_shared_results(project: dict[str, str]) -> None:
    from asyncq.contrib.django import AsyncqBackend

    with pytest.raises(ConfigurationError, match="needs a result backend every process can read"):
        AsyncqBackend("rpc", {"OPTIONS": {"APP": "tests.integration.test_django:RPC_APP"}})
    with pytest.raises(ConfigurationError, match="is not an asyncq App"):
        AsyncqBackend("bad", {"OPTIONS": {"APP": "tests.integration.test_django:PROJECT"}})


def test_the_worker_command_refuses_a_bad_option(project: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), "asyncq_worker", "--log-level", "loud"],
        env=project,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "unknown log level 'loud'" in done.stderr
    assert "Traceback" not in done.stderr


# -- enqueue_on_commit -----------------------------------------------------------------------------


def test_sent_only_when_the_transaction_commits(project: dict[str, str]) -> None:
    from django.db import transaction
    from shop.models import Order
    from shop.tasks import send_confirmation

    from asyncq.contrib.django import apply_on_commit

    held = f"held-{uuid.uuid4().hex[:8]}"  # no worker consumes it: what was sent stays there
    with transaction.atomic():
        order = Order.objects.create(email="commit@example.com")
        result = apply_on_commit(send_confirmation, [order.id], queue=held)
        assert result.id  # known before the commit
        assert purge(held) == 0  # not sent while the transaction is open
    assert purge(held) == 1  # sent by the commit
    assert result.state == "PENDING"


def test_never_sent_when_the_transaction_rolls_back(project: dict[str, str]) -> None:
    from django.db import transaction
    from shop.models import Order
    from shop.tasks import send_confirmation

    from asyncq.contrib.django import apply_on_commit

    held = f"held-{uuid.uuid4().hex[:8]}"
    with rolled_back():
        order = Order.objects.create(email="rollback@example.com")
        apply_on_commit(send_confirmation, [order.id], queue=held)
    assert not Order.objects.filter(email="rollback@example.com").exists()
    assert purge(held) == 0

    # A rolled-back savepoint drops its sends; the outer transaction's commit sends the rest.
    with transaction.atomic():
        kept = Order.objects.create(email="outer@example.com")
        apply_on_commit(send_confirmation, [kept.id], queue=held)
        with rolled_back():
            inner = Order.objects.create(email="inner@example.com")
            apply_on_commit(send_confirmation, [inner.id], queue=held)
    assert purge(held) == 1


def test_a_django_task_is_sent_on_commit_with_its_result_id_known_before(
    project: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    from django.db import transaction
    from shop.tasks import count_orders

    from asyncq.contrib.django import enqueue_on_commit
    from asyncq.contrib.django.tasks_api import TaskResultDoesNotExist, TaskResultStatus, task_backends

    backend = task_backends["default"]
    with transaction.atomic():
        result = enqueue_on_commit(count_orders, "commit.test")
        assert result.status == TaskResultStatus.READY
        # Nothing is stored or sent before the commit (the backend writes its record, then sends).
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result.id)
    assert wait_finished(result).return_value == {"orders": 0}

    with rolled_back():
        dropped = enqueue_on_commit(count_orders, "rollback.test")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(dropped.id)

    with pytest.raises(TypeError, match="an asyncq task or a Django @task on AsyncqBackend"):
        enqueue_on_commit(print, "x")  # type: ignore[call-overload]


def test_bad_arguments_fail_at_the_call_not_at_the_commit(project: dict[str, str]) -> None:
    from django.db import transaction
    from shop.tasks import send_confirmation

    from asyncq.contrib.django import apply_on_commit

    with transaction.atomic(), pytest.raises(ValueError, match="priority must be 0-9"):
        apply_on_commit(send_confirmation, [1], priority=12)


# -- the views, end to end with the worker --------------------------------------------------------


def test_an_order_is_confirmed_by_the_worker_after_its_commit(
    project: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    from django.test import Client
    from shop.models import Order

    from asyncq.contrib.django import get_app
    from asyncq.result import AsyncResult
    from asyncq.sync import SyncResult

    client = Client()
    response = client.post("/orders/", {"email": "ada@example.com"})
    assert response.status_code == 201, response.content
    body = response.json()
    handle: SyncResult[Any] = SyncResult(AsyncResult(body["task_id"], get_app()))
    assert handle.get(timeout=60) == "ada@example.com"  # the worker found the committed row
    assert Order.objects.get(pk=body["order_id"]).confirmed_at is not None
    assert client.get(f"/orders/{body['order_id']}/").json()["confirmation_sent"] is True

    rejected = client.post("/orders/", {"email": "bob@example.com", "reject": "1"})
    assert rejected.status_code == 409
    assert not Order.objects.filter(email="bob@example.com").exists()


def test_a_django_task_started_from_a_view_is_read_through_a_view(
    project: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    from django.test import Client
    from shop.models import Order

    Order.objects.create(email="report@example.org")
    client = Client()
    result_id = client.post("/reports/", {"domain": "example.org"}).json()["result_id"]

    def finished() -> bool:
        return client.get(f"/reports/{result_id}/").json()["status"] == "SUCCESSFUL"

    poll(finished)
    assert client.get(f"/reports/{result_id}/").json()["return_value"] == {"orders": 1}


# -- Django's task framework on asyncq ---------------------------------------------------------------


def wait_finished(result: Any) -> Any:
    def finished() -> bool:
        result.refresh()
        return bool(result.is_finished)

    poll(finished)
    return result


def test_django_tasks_run_on_asyncq_workers(project: dict[str, str], worker: subprocess.Popen[bytes]) -> None:
    from shop.tasks import confirmed_share, count_orders, describe_attempt, refuse

    from asyncq.contrib.django.tasks_api import TaskResultDoesNotExist, TaskResultStatus, task_backends

    result = count_orders.enqueue("nowhere.test")
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    assert wait_finished(result).status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"orders": 0}
    assert result.args == ["nowhere.test"]
    assert result.worker_ids and result.started_at <= result.finished_at

    # The same result, read by id through the backend and through the task.
    again = task_backends["default"].get_result(result.id)
    assert (again.status, again.return_value, again.task.func) == (
        TaskResultStatus.SUCCESSFUL,
        {"orders": 0},
        count_orders.func,
    )
    assert count_orders.get_result(result.id).id == result.id
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("no-such-result")

    share = wait_finished(confirmed_share.enqueue())  # async def, "reports" queue, priority 50
    assert share.status == TaskResultStatus.SUCCESSFUL
    assert 0.0 <= share.return_value <= 1.0

    failed = wait_finished(refuse.enqueue("out of stock"))
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class_path == "builtins.ValueError"
    assert failed.errors[0].exception_class is ValueError
    assert "ValueError: out of stock" in failed.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = failed.return_value

    described = wait_finished(describe_attempt.enqueue("ctx"))
    assert described.return_value == {"label": "ctx", "result_id": described.id, "attempt": 1}


def test_run_after_defers_a_django_task(project: dict[str, str], worker: subprocess.Popen[bytes]) -> None:
    from django.utils import timezone
    from shop.tasks import count_orders

    not_before = timezone.now() + timedelta(seconds=1)
    result = wait_finished(count_orders.using(run_after=not_before).enqueue("later.test"))
    assert result.started_at >= not_before


async def test_aenqueue_and_aget_result_run_on_the_callers_loop(
    project: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    import asyncio

    from shop.tasks import count_orders

    from asyncq.contrib.django.tasks_api import TaskResultStatus

    result = await count_orders.aenqueue("async.test")
    for _ in range(1200):
        await result.arefresh()
        if result.is_finished:
            break
        await asyncio.sleep(0.05)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert (await count_orders.aget_result(result.id)).return_value == {"orders": 0}
    from asyncq.contrib.django import get_app

    await get_app().aclose()  # this loop's connections


# -- database connections of worker threads ----------------------------------------------------


def test_a_worker_thread_gets_a_new_connection_after_the_database_dropped_its_own(
    project: dict[str, str], tmp_path: Path
) -> None:
    from django.db import connection
    from shop.models import Order
    from shop.tasks import send_confirmation

    queue = f"db-{uuid.uuid4().hex[:8]}"
    order = Order.objects.create(email="reconnect@example.com")
    # One thread, so the second task runs where the first one's connection was.
    with running_worker(project, tmp_path / "worker.log", "-Q", queue, "-c", "1", "--thread-pool-size", "1"):
        first = send_confirmation.apply_async([order.id], queue=queue)
        assert first.get(timeout=60) == "reconnect@example.com"
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (own_pid,) = cursor.fetchone()
        # As a database restart would: every other session of this database is ended.
        admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{project['EXAMPLE_DB_NAME']}' AND pid <> {own_pid}"
        )
        second = send_confirmation.apply_async([order.id], queue=queue)
        assert second.get(timeout=60) == "reconnect@example.com"
