"""A healthy task in flight on workers that poison messages kill, again and again.

One slow healthy task (30 s) is held by the only worker while, one after another, 10 fresh
poison messages each kill that worker; the supervisor restarts it and the slow task comes
back each time. The rule (docs/worker.md): only crashes while a message runs isolated count
towards ``max_deliveries``, so the healthy task must not be dead-lettered, however many
times other messages killed its worker.

Quorum queues are the case to watch: the server counts every return itself
(``x-delivery-limit``) and dead-letters past it, whatever the worker decided.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.apps import chaos_app
from tests.chaos.harness import Rig, Supervisor, dead_letter_counts, task_id
from tests.servers import RabbitNode, wait_until

CRASHES = 10  # above max_deliveries (worker 5, RabbitMQ driver 10)

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.timeout(400)]


async def send(rig: Rig, *, poison: int | None = None) -> None:
    app = rig.app()
    try:
        if poison is None:  # 30 s: every crash comes before it can finish
            slow = (0, rig.ledger, 30_000)
            built = chaos_app.record.build_message(slow, queue=rig.queue, task_id=task_id(0))
        else:
            built = chaos_app.poison.build_message((poison,), queue=rig.queue, task_id=task_id(poison))
        await app.send_message(built)
    finally:
        await app.aclose()


@pytest.mark.usefixtures("redis_server_installed")
def test_quorum_bystander_outlives_its_workers_crashes(rabbit_node: RabbitNode, tmp_path: Path) -> None:
    rig = Rig("rabbitmq-quorum", tmp_path, rabbit_node)
    fleet = Supervisor(rig.env(), tmp_path, workers=1)
    fleet.start()
    try:
        asyncio.run(send(rig))
        time.sleep(2)  # let the worker take the slow task first
        for k in range(1, CRASHES + 1):
            asyncio.run(send(rig, poison=k))
            wait_until(lambda k=k: fleet.restarts >= k, timeout=90, what=f"crash {k} of the worker")
            time.sleep(2)  # the restarted worker takes the slow task back
        dead = asyncio.run(dead_letter_counts(rig))
    finally:
        fleet.stop()
        rig.close()
    assert not dead[0], f"the healthy task was dead-lettered after {fleet.restarts} crashes of its worker"
