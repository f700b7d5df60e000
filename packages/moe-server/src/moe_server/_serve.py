"""`serve`: the app under uvicorn, with a shutdown that drains the worker.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and waits for open ones; before that, the
worker is drained: new requests get 503/529, queued ones end at once with the API's error, and the
running one has `grace` seconds to finish before it is ended the same way, so no stream is cut
without an error event. Then the app's lifespan stops the worker and `serve` returns.
"""

from __future__ import annotations

import uvicorn

from ._app import check_bind, create_app
from ._provider import Provider
from ._worker import Worker

# After the grace, what the ended streams need to send their error event and close.
_FLUSH_S = 3.0


class _Server(uvicorn.Server):
    """uvicorn's server, draining the worker before it waits for the open connections."""

    def __init__(self, config: uvicorn.Config, *, worker: Worker, grace: float):
        super().__init__(config)
        self.worker, self.grace = worker, grace

    async def shutdown(self, sockets=None) -> None:
        self.worker.drain(self.grace)
        await super().shutdown(sockets)


def serve(
    provider: Provider,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    log_level: str = "info",
    grace: float = 5.0,
    **limits,
) -> None:
    """Run the server until SIGTERM or Ctrl-C (blocks), then drain: `grace` seconds for the
    running generation. Raises BindError before binding an exposed address without an API key."""
    if grace < 0:
        raise ValueError(f"grace must be at least 0 seconds, got {grace}")
    check_bind(host, api_key)
    app = create_app(provider, api_key=api_key, **limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # uvicorn's annotation says int; it waits with asyncio, which takes fractions of seconds
        timeout_graceful_shutdown=grace + _FLUSH_S,  # type: ignore[arg-type]
    )
    _Server(config, worker=app.state.engine.worker, grace=grace).run()
