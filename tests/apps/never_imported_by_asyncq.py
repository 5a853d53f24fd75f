"""A module a worker must never import because a message named it (see test_security_worker.py)."""

raise RuntimeError("imported because a message named it")
