"""``asyncq dashboard``: serve the dashboard with uvicorn, with a login on non-loopback addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

from asyncq.dashboard.auth import is_loopback
from asyncq.dashboard.factory import create_app
from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from asyncq.app import App

__all__ = ["build", "serve"]


def build(app: App, host: str, **options: object) -> Starlette:
    """The dashboard app for ``host``: a login is required unless ``host`` is a loopback address."""
    loopback = is_loopback(host)
    try:
        return create_app(app, require_login=None if loopback else True, **options)  # type: ignore[arg-type]
    except ValueError as exc:
        where = "" if loopback else f" (binding to {host}, which is not a loopback address, needs a login)"
        raise ConfigurationError(f"{exc}{where}") from None


def serve(app: App, *, host: str = "127.0.0.1", port: int = 5555, log_level: str = "info") -> None:
    """Serve the dashboard of ``app`` until interrupted."""
    web = build(app, host)
    # Open SSE streams never end by themselves: give them a few seconds on shutdown, not forever.
    uvicorn.run(
        web, host=host, port=port, log_level=log_level, proxy_headers=False, timeout_graceful_shutdown=3
    )
