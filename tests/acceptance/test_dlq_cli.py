"""``asyncq dlq``: list, show, requeue and purge dead letters from the command line."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from asyncq.brokers import broker_from_url
from tests.acceptance.conftest import asyncq

APP = "tests.apps.cli_app:app"
TASK = "tests.apps.cli_app.add"


async def _dead_letter_waiting(url: str, count: int, reason: str) -> None:
    """Take ``count`` waiting messages of the default queue and dead-letter them, as a worker would."""
    broker = broker_from_url(url)
    await broker.connect()
    try:
        async with aclosing(broker.consume(["default"], prefetch=1)) as deliveries:
            for _ in range(count):
                delivery = await asyncio.wait_for(anext(deliveries), 30)
                await delivery.dead_letter(reason)
    finally:
        await broker.aclose()


def _enqueue(env: dict[str, str], args: str) -> str:
    out = asyncq("enqueue", APP, TASK, "--args", args, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_dlq_list_show_requeue_purge(store_env: dict[str, str]) -> None:
    first = _enqueue(store_env, "[1, 2]")
    second = _enqueue(store_env, "[3, 4]")
    asyncio.run(_dead_letter_waiting(store_env["ASYNCQ_BROKER_URL"], 2, "poison: test"))

    listed = asyncq("dlq", APP, "list", env=store_env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split()[:2] == ["ID", "QUEUE"]
    assert [row.split()[0] for row in rows] == [first, second]
    assert all(TASK in row and "poison: test" in row for row in rows)

    as_json = asyncq("dlq", APP, "list", "--json", "--limit", "1", env=store_env)
    (line,) = as_json.stdout.strip().splitlines()
    assert json.loads(line)["id"] == first

    shown = asyncq("dlq", APP, "show", second, env=store_env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["id"], view["queue"], view["task"], view["args"]) == (second, "default", TASK, [3, 4])
    assert view["reason"] == "poison: test"

    missing = asyncq("dlq", APP, "show", "no-such-id", env=store_env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "Error: no dead letter with id 'no-such-id'"

    both = asyncq("dlq", APP, "requeue", first, "--all", env=store_env)
    assert both.returncode == 2 and "not both" in both.stderr

    requeued = asyncq("dlq", APP, "requeue", first, env=store_env)
    assert (requeued.returncode, requeued.stdout.strip()) == (0, f"requeued {first}")
    again = asyncq("dlq", APP, "requeue", first, env=store_env)
    assert again.returncode == 2

    purged = asyncq("dlq", APP, "purge", env=store_env)
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert asyncq("dlq", APP, "list", env=store_env).stdout.strip() == "no dead letters"
    # The requeued one is waiting in its queue again.
    assert asyncq("purge", APP, env=store_env).stdout.strip() == "purged 1 message(s) from default"


def test_dlq_requeue_all_then_worker_runs_them(store_env: dict[str, str], start_worker) -> None:  # type: ignore[no-untyped-def]
    ids = [_enqueue(store_env, f"[{i}, 10]") for i in range(3)]
    asyncio.run(_dead_letter_waiting(store_env["ASYNCQ_BROKER_URL"], 3, "poison"))
    out = asyncq("dlq", APP, "requeue", "--all", env=store_env)
    assert out.stdout.strip() == "requeued 3 dead letter(s)"
    worker = start_worker(APP, env=store_env)
    try:
        for i, task_id in enumerate(ids):
            shown = asyncq("result", APP, task_id, "--wait", "--timeout", "30", env=store_env)
            assert json.loads(shown.stdout) == {"id": task_id, "state": "SUCCESS", "result": i + 10}
    finally:
        worker.terminate()
        worker.wait(timeout=30)
