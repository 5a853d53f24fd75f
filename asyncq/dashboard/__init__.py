"""The asyncq dashboard (extra ``asyncq[dashboard]``): ``asyncq dashboard module:app``, or mount
``create_app(app)`` in an ASGI app. See docs/dashboard.md."""

from __future__ import annotations

from asyncq.dashboard.factory import create_app

__all__ = ["create_app"]
