"""A module a worker must never import because a message named it (tests/integration/test_security_worker.py)."""

raise RuntimeError("imported because a message named it")
