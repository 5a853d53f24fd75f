"""A Flask app whose views send tasks with the sync API; the tasks run in the Flask app context.

Run a worker and the web app (same broker: ``ASYNCQ_BROKER_URL``, else the embedded SQLite
store)::

    asyncq worker examples.flask_app:queue.app
    flask --app examples.flask_app:create_app run

    curl -X POST 'http://127.0.0.1:5000/add?x=2&y=3'       # {"id": "..."}
    curl http://127.0.0.1:5000/results/<id>                # {"id": ..., "state": "SUCCESS", "result": 5, ...}
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from asyncq import SyncResult
from asyncq.contrib.flask import FlaskAsyncq

queue = FlaskAsyncq(name="flask-example")


@queue.task(name="examples.flask.add")
def add(x: int, y: int) -> dict[str, Any]:
    """Runs on a worker, inside the Flask app context (``current_app`` works)."""
    return {"sum": x + y, "app": current_app.name}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The Flask app; ``config`` may set ``ASYNCQ_*`` keys (``ASYNCQ_BROKER_URL``, ...)."""
    flask_app = Flask("flask_example")
    flask_app.config.update(config or {})
    queue.init_app(flask_app)

    @flask_app.post("/add")
    def enqueue_add() -> dict[str, str]:
        result = add.delay(int(request.args["x"]), int(request.args["y"]))  # sent now; no event loop here
        return {"id": result.id}

    @flask_app.get("/results/<task_id>")
    def read_result(task_id: str) -> dict[str, Any]:
        result = SyncResult(queue.app.AsyncResult(task_id))
        value = result.get(timeout=10)
        return {"id": task_id, "state": str(result.state), "result": value["sum"], "app": value["app"]}

    return flask_app


#: The Flask app a worker process binds its tasks to (``asyncq worker examples.flask_app:queue.app``).
app = create_app()
