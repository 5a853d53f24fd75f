"""Sends one task with a real Celery producer and prints what ``AsyncResult.get()`` gave, as JSON.

Usage: python -m tests.apps.celery_producer '<json: name, args, kwargs, options>'.
Prints {"ok": result} or {"error": type name, "module": its module, "args": exception args}.
"""

from __future__ import annotations

import json
import sys
import time

from tests.apps.celery_side import celery_app


def main() -> None:
    """Send, wait, print."""
    spec = json.loads(sys.argv[1])
    sent_at = time.time()
    result = celery_app.send_task(
        spec["name"], spec.get("args"), spec.get("kwargs"), **spec.get("options", {})
    )
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
