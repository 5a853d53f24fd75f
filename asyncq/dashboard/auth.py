"""Access control: a login (a token, or a user name and password) and CSRF protection on every action.

A login is required whenever credentials are configured, and the server refuses to bind to a
non-loopback address without them. A signed session cookie (HttpOnly, SameSite=Lax) remembers
a login; API clients may send ``Authorization: Bearer <token>`` instead. Every state-changing
request must carry the CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) matching
the ``asyncq_csrf`` cookie, unless it authenticates with a bearer token, which browsers never
send by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from asyncq.dashboard.throttle import LoginThrottle

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Auth", "LoginMiddleware", "is_loopback"]

SESSION_COOKIE: Final = "asyncq_session"
CSRF_COOKIE: Final = "asyncq_csrf"
SESSION_SECONDS: Final = 12 * 3600
_OPEN_PATHS: Final = ("/login", "/static/", "/healthz")


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or "localhost") is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _equal(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Auth:
    """The dashboard's credentials and secrets.

    Args:
        token: a shared secret to log in with (and to send as a bearer token).
        username / password: a user to log in as (both or neither).
        required: ask for a login (default: whenever credentials are configured).
        throttle: the limit on failed logins per client address and user name.
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None
    required: bool | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    throttle: LoginThrottle = field(default_factory=LoginThrottle, repr=False)

    def __post_init__(self) -> None:
        if bool(self.username) != bool(self.password):
            raise ValueError("set both dashboard_username and dashboard_password, or neither")
        if self.required is None:
            self.required = self.configured
        if self.required and not self.configured:
            raise ValueError(
                "a login is required but no credentials are set: set dashboard_token, or "
                "dashboard_username and dashboard_password (ASYNCQ_DASHBOARD_TOKEN, ...)"
            )

    @property
    def configured(self) -> bool:
        return bool(self.token or (self.username and self.password))

    @property
    def uses_token(self) -> bool:
        return bool(self.token)

    def check_login(self, form: dict[str, Any]) -> bool:
        """True when the login form's fields match the configured credentials."""
        if self.token and _equal(str(form.get("token") or ""), self.token):
            return True
        return bool(
            self.username
            and _equal(str(form.get("username") or ""), self.username)
            and _equal(str(form.get("password") or ""), self.password)
        )

    def _sign(self, text: str) -> str:
        return base64.urlsafe_b64encode(
            hmac.new(self.secret, text.encode(), hashlib.sha256).digest()
        ).decode()

    def new_session(self) -> str:
        body = f"{int(time.time()) + SESSION_SECONDS}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body)}"

    def session_valid(self, value: str | None) -> bool:
        if not value or value.count(".") != 2:
            return False
        body, _, signature = value.rpartition(".")
        if not _equal(signature, self._sign(body)):
            return False
        expiry = body.partition(".")[0]
        return expiry.isdigit() and int(expiry) > time.time()

    def bearer_valid(self, conn: HTTPConnection) -> bool:
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and _equal(value.strip(), self.token)

    def authenticated(self, conn: HTTPConnection) -> bool:
        if not self.required:
            return True
        return self.bearer_valid(conn) or self.session_valid(conn.cookies.get(SESSION_COOKIE))

    # -- CSRF ------------------------------------------------------------------------------------

    @staticmethod
    def csrf_token(conn: HTTPConnection) -> str:
        """The request's CSRF token: its cookie's, or a new one (set by :meth:`set_csrf_cookie`)."""
        token = conn.cookies.get(CSRF_COOKIE)
        if token and len(token) >= 20:
            return token
        state = conn.scope.setdefault("state", {})
        if "asyncq_new_csrf" not in state:
            state["asyncq_new_csrf"] = secrets.token_urlsafe(24)
        return str(state["asyncq_new_csrf"])

    @staticmethod
    def set_csrf_cookie(conn: HTTPConnection, response: Response) -> Response:
        new = conn.scope.get("state", {}).get("asyncq_new_csrf")
        if new:
            response.set_cookie(CSRF_COOKIE, new, path=_root(conn), samesite="strict", httponly=False)
        return response

    def csrf_valid(self, request: Request, form: dict[str, Any] | None) -> bool:
        """True when a state-changing request proves it comes from a dashboard page (or a bearer)."""
        if self.bearer_valid(request):
            return True
        cookie = request.cookies.get(CSRF_COOKIE)
        given = request.headers.get("x-csrf-token") or (form or {}).get("csrf")
        return _equal(str(given or ""), cookie)


def _root(conn: HTTPConnection) -> str:
    return str(conn.scope.get("root_path") or "") + "/"


class LoginMiddleware:
    """Sends an unauthenticated request to the login page (pages) or answers 401 (the API)."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.required:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope["path"][len(scope.get("root_path") or "") :] if scope.get("root_path") else scope["path"]
        if path.startswith(_OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        response: Response
        if "authorization" in conn.headers:
            # Bearer tokens are guesses too: limited per client address like the login form.
            throttle = self.auth.throttle
            keys = throttle.keys(conn.client.host if conn.client else None, None)
            wait = throttle.retry_after(keys)
            if wait:
                response = JSONResponse({"ok": False, "error": "too many failed logins"}, status_code=429)
                response.headers["Retry-After"] = str(wait)
                await response(scope, receive, send)
                return
            if not self.auth.bearer_valid(conn):
                throttle.failed(keys)
        if self.auth.authenticated(conn):
            await self.app(scope, receive, send)
            return
        if path.startswith("/api/"):
            response = JSONResponse({"ok": False, "error": "log in first"}, status_code=401)
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            target = path + (("?" + conn.url.query) if conn.url.query else "")
            response = RedirectResponse(f"{_root(conn)}login?next={quote(target)}", status_code=303)
        await response(scope, receive, send)
