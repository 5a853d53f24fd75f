"""Sends one task (or chain) with a real Celery producer and prints what ``AsyncResult.get()`` gave.

Usage: python -m tests.apps.celery_producer '<json: name, args, kwargs, options, link, link_error, chain>'.
``link`` / ``link_error`` / ``chain`` are lists of signatures as JSON (task, args, kwargs,
options, immutable); with ``chain`` the chain is sent and its last result awaited. With
``many`` (a list of args lists) one task is sent per entry, all before any is awaited, and
``ok`` is the list of their results.
Prints {"ok": result} or {"error": type name, "module": its module, "args": exception args}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from celery import chain, signature

from tests.apps.celery_side import celery_app


def _signature(spec: dict[str, Any]) -> Any:
    return signature(
        spec["task"],
        args=spec.get("args"),
        kwargs=spec.get("kwargs"),
        options=spec.get("options"),
        immutable=spec.get("immutable", False),
        app=celery_app,
    )


def main() -> None:
    """Send, wait, print."""
    spec = json.loads(sys.argv[1])
    options = dict(spec.get("options", {}))
    for key in ("link", "link_error"):
        if key in spec:
            options[key] = [_signature(sig) for sig in spec[key]]
    sent_at = time.time()
    if "many" in spec:
        name, kwargs = spec["name"], spec.get("kwargs")
        sent = [celery_app.send_task(name, args, kwargs, **options) for args in spec["many"]]
        values = [one.get(timeout=spec.get("timeout", 60)) for one in sent]
        print(json.dumps({"ok": values, "ids": [one.id for one in sent], "sent_at": sent_at}), flush=True)
        return
    if "chain" in spec:
        result = chain(*(_signature(sig) for sig in spec["chain"])).apply_async(**options)
    else:
        result = celery_app.send_task(spec["name"], spec.get("args"), spec.get("kwargs"), **options)
    try:
        value = result.get(timeout=spec.get("timeout", 60))
    except Exception as exc:
        out = {
            "error": type(exc).__name__,
            "module": type(exc).__module__,
            "args": [str(a) for a in exc.args],
        }
    else:
        out = {"ok": value}
    out.update({"id": result.id, "state": result.state, "sent_at": sent_at})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
