"""The viewer's front door: the bearer token, the Host and Origin checks, security headers.

A pure ASGI middleware (not ``BaseHTTPMiddleware``) so the event stream passes through it
unbuffered. The page and its static files load without the token, since they hold no data;
every other path (the whole API) needs ``Authorization: Bearer <token>`` when one is set.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: No inline script or style, nothing from another origin, no framing: the page is only ours.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_public(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


def hostname(host: str) -> str:
    """The name in a Host header, without the port: ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(error: str, message: str, status: int) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": error, "message": message}, status, headers=headers)


class Guard:
    """Refuses what the app must not serve, and adds the security headers to every answer.

    ``allowed_hosts`` (set when the server listens on loopback without a token) stops DNS
    rebinding: a web page whose name resolves to 127.0.0.1 would otherwise be same-origin with
    the viewer. The Origin check stops other sites from posting controls through a browser.
    """

    def __init__(
        self, app: ASGIApp, token: str | None = None, allowed_hosts: Collection[str] | None = None
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = self._refuse(scope)
        send = self._with_headers(scope["path"], send)
        if answer is not None:
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refuse(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.allowed_hosts is not None and hostname(host) not in self.allowed_hosts:
            return refusal("InvalidHost", f"host {host!r} is not served here", 400)
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin and urlsplit(origin).netloc != host:
            return refusal("CrossOrigin", "requests from another origin are refused", 403)
        if self.token is None or is_public(scope["path"]):
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return None
        return refusal(
            "Unauthorized", "a valid token is needed: Authorization: Bearer <token>", 401
        )

    @staticmethod
    def _with_headers(path: str, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.raw.append((name, value))
                if not is_public(path):
                    headers["cache-control"] = "no-store"  # API answers hold workflow data
            await send(message)

        return sending
