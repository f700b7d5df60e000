"""Requests from other web origins are refused, so a page elsewhere cannot drive this server.

Without CORS headers a browser already keeps another site from reading the answers, but not from
sending a request (a form post, a `fetch` with `mode: "no-cors"`) that starts a generation. A
browser says where a request comes from in `Origin`; one that is not this server's own is
refused. With no API key the server listens on loopback only, and a page could still reach it
through a name of its own resolved to 127.0.0.1 (DNS rebinding): then the `Host` a request names
must be a loopback address or `localhost` too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Refuse = Callable[[str, int, str, str], Response]  # (path, status, kind, message)


def loopback_name(host: str) -> bool:
    """Whether a `Host` header's name (port left out) is a loopback literal or `localhost`;
    names are never resolved, since a resolver is what a rebinding attack controls."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SameOrigin:
    """ASGI middleware: 403 for a request from another origin, or (when `loopback_only`) for a
    `Host` that is not a loopback name."""

    def __init__(self, app: ASGIApp, *, loopback_only: bool, refuse: Refuse):
        self.app, self.loopback_only, self.refuse = app, loopback_only, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        message = None
        if self.loopback_only and not loopback_name(host):
            message = f"this server answers only to a loopback name, not to Host {host!r}"
        elif origin is not None and not _same(origin, host):
            message = f"requests from another origin ({origin}) are not served"
        if message is not None:
            response = self.refuse(scope["path"], 403, "permission_error", message)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _same(origin: str, host: str) -> bool:
    # Host and port only: behind a proxy that ends TLS the page is https while this server sees
    # http, and a page on the same host and port is this server's own either way.
    return urlsplit(origin).netloc.lower() == host.lower()
