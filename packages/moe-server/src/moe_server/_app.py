"""The Starlette app: its routes, API-key guard and bind check (`serve` runs it: _serve.py)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import _anthropic, _completions, _models, _openai, _openai_bodies, _page, _responses
from ._engine import Engine, Limits
from ._events import LiveFeed, live_events
from ._origin import SameOrigin
from ._provider import Provider


class BindError(ValueError):
    """Binding a non-loopback address without an API key."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose the server beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise BindError(
            f"refusing to listen on {host}, which other machines can reach, without an API key: "
            "set one (--api-key or MOE_API_KEY) or bind 127.0.0.1"
        )


def _is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def _error(path: str, status: int, kind: str, message: str) -> JSONResponse:
    if _is_anthropic(path):
        return JSONResponse(_anthropic.error_body(kind, message), status_code=status)
    return JSONResponse({"error": _openai_bodies.error_body(message, kind)}, status_code=status)


# What answers without the API key when one is set: the page (`/`, `/static/...`), which holds no
# data and asks for the key itself, and `/health`, which then says only that the server is alive.
# Every other path, a route added later included, needs the key.
OPEN = frozenset({"/", "/health"})
OPEN_PREFIXES = ("/static/",)


class _Guard:
    """API-key check and per-request metrics, as plain ASGI so streams pass through. Sets
    `request.state.authorized` for the routes that show more to a client with the key."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, engine: Engine):
        self.app, self.api_key, self.engine = app, api_key, engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        authorized = not self.api_key or self._authorized(scope, self.api_key)
        scope.setdefault("state", {})["authorized"] = authorized
        if not authorized and path not in OPEN and not path.startswith(OPEN_PREFIXES):
            response = _error(path, 401, "authentication_error", "invalid or missing API key")
            self.engine.metrics.request(path, 401)
            return await response(scope, receive, send)

        async def send_and_count(message) -> None:
            if message["type"] == "http.response.start":
                self.engine.metrics.request(path, message["status"])
            await send(message)

        await self.app(scope, receive, send_and_count)

    def _authorized(self, scope: Scope, api_key: str) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key", "")
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = given or authorization[7:].strip()
        return hmac.compare_digest(given.encode(), api_key.encode())


async def _health(request: Request) -> Response:
    """Liveness for anyone; the model and the queue only for a client with the key (or when
    no key is set)."""
    if not getattr(request.state, "authorized", False):
        return JSONResponse({"status": "ok"})
    engine: Engine = request.app.state.engine
    body = {
        "status": "ok",
        "model": engine.provider.model_id,
        "queue_depth": engine.worker.waiting,
        "running": engine.worker.running,
    }
    health = getattr(engine.provider, "health", None)
    if health is not None:  # several hosts: each rank's state, memory and expert cache
        body.update(health())
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def _metrics(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    health = getattr(engine.provider, "health", None)
    text = engine.metrics.render(
        waiting=engine.worker.waiting,
        running=engine.worker.running,
        stats=engine.worker.last_stats,
        ranks=health()["ranks"] if health is not None else None,
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _error(
        request.url.path,
        exc.status_code,
        kind,
        f"{request.method} {request.url.path}: {exc.detail}",
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(
        request.url.path, 500, "api_error", f"internal error: {type(exc).__name__}: {exc}"
    )


def create_app(
    provider: Provider,
    *,
    api_key: str | None = None,
    max_queue: int = 8,
    max_tokens_default: int = 512,
    max_body_bytes: int = 4 * 1024 * 1024,
    disk_mb_s: float | None = None,
    batch: int = 8,
) -> Starlette:
    """An ASGI app serving `provider` over the OpenAI and Anthropic APIs, and a live page at `/`.

    One worker thread runs the model; the event loop only parses, queues and streams, so
    `/health` answers during a generation. `disk_mb_s` (the disk's measured read speed) is
    what the page sets the expert reads against. `batch`: up to that many requests decode
    together, each token for token as it would alone, where the provider can (`open_batch`).
    """
    if not isinstance(provider, Provider):
        raise TypeError(
            f"{type(provider).__name__} lacks the Provider interface "
            "(model_id, tokenizer, stream, encode_prompt, stats)"
        )
    engine = Engine(
        provider,
        Limits(
            max_queue=max_queue,
            max_tokens_default=max_tokens_default,
            max_body_bytes=max_body_bytes,
            batch=batch,
        ),
    )

    live = LiveFeed(
        engine.worker,
        model=provider.model_id,
        limits={"max_tokens_default": max_tokens_default, "max_context": engine.context_length()},
        disk_mb_s=disk_mb_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.worker.start()
        live.start()
        try:
            yield
        finally:
            await live.stop()
            engine.worker.stop()

    routes = [
        Route("/v1/chat/completions", _openai.chat_completions, methods=["POST"]),
        Route("/v1/completions", _completions.completions, methods=["POST"]),
        Route("/v1/responses", _responses.create, methods=["POST"]),
        Route("/v1/responses/{response_id}", _responses.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", _responses.delete, methods=["DELETE"]),
        Route("/v1/models", _models.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", _models.model, methods=["GET"]),
        Route("/v1/messages", _anthropic.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", _anthropic.count_tokens, methods=["POST"]),
        Route("/health", _health, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/live/events", live_events, methods=["GET"]),
        *_page.routes(key_required=bool(api_key)),
    ]
    # Starlette types a handler as taking any Exception; _http_error takes the one it is for.
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.engine = engine
    app.state.live = live
    app.add_middleware(_Guard, api_key=api_key, engine=engine)
    # Added last, so it runs first: another origin is refused before anything else looks.
    app.add_middleware(SameOrigin, loopback_only=not api_key, refuse=_error)
    return app
