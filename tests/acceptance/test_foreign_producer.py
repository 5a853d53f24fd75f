"""A producer in another language: it writes the documented JSON envelope by hand.

Nothing here uses asyncq's message or task code to build the message; the broker driver
only carries the bytes, as the broker's own client library would for another language.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from asyncq import App
from asyncq.brokers import OutgoingMessage


async def test_hand_written_json_message_runs(tmp_path: Path) -> None:
    app = App("foreign", broker=f"sqlite:///{tmp_path / 'store.db'}")

    @app.task(name="billing.total")
    async def total(prices: list[str], currency: str) -> str:
        from decimal import Decimal

        return f"{sum(Decimal(p) for p in prices)} {currency}"

    task_id = str(uuid.uuid4())
    envelope = {
        "v": 1,
        "id": task_id,
        "task": "billing.total",
        "args": [["1.10", "2.20"]],
        "kwargs": {"currency": "EUR"},
        "queue": "default",
        "eta": None,
    }
    body = json.dumps(envelope).encode()
    await app.connect()
    await app.broker.publish(OutgoingMessage(id=task_id, queue="default", body=body))
    async with app.worker():
        assert await app.AsyncResult(task_id).get(timeout=15) == "3.30 EUR"
    # The record is plain JSON too, readable without asyncq.
    record = json.loads(await app.backend.get(task_id) or b"{}")
    assert record["status"] == "SUCCESS" and record["result"] == "3.30 EUR"
    await app.aclose()
