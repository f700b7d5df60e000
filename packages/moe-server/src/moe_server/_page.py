"""The live page at `/`: a few files shipped in this package, served as they are.

No build step and nothing fetched from elsewhere: the page works offline, and its Content
Security Policy lets it load and talk to this server only.
"""

from __future__ import annotations

from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FILES = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (resources.files("moe_server") / "static" / name).read_bytes()


def routes(*, key_required: bool) -> list[Route]:
    """`GET /` and `GET /static/{name}`. The page learns from a meta tag whether to ask for the
    API key before its first request; the page itself holds no data, so it needs no key."""
    index = _read("index.html").replace(b"{{key_required}}", b"true" if key_required else b"false")
    files = {name: _read(name) for name in FILES}

    async def page(request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            raise HTTPException(404, "not found")
        return Response(files[name], media_type=FILES[name], headers=HEADERS)

    return [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
    ]
