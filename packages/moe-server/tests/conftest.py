"""Shared fixtures: a tiny model, a real `moe_runtime.Session` over it with its experts offloaded,
the unmodified mlx-lm model to compare with, and a real uvicorn server on a free port."""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import mlx_lm
import pytest
import uvicorn

from moe_runtime import Session
from moe_server import create_app

sys.path.insert(0, str(Path(__file__).parent))
from _fixture_model import CAPACITY, CONTEXT, NUM_EXPERTS, NUM_LAYERS, TOP_K


@pytest.fixture(scope="session")
def model_path(moe_checkpoint, tmp_path_factory) -> Path:
    built = moe_checkpoint("qwen3_moe", num_layers=NUM_LAYERS, num_experts=NUM_EXPERTS, top_k=TOP_K)
    return Path(shutil.copytree(built, tmp_path_factory.mktemp("models") / "tiny-moe"))


@pytest.fixture(scope="session")
def provider(model_path, tmp_path_factory):
    """The real runtime, offloaded: fewer expert slots per layer than the layer has experts."""
    # The context lowered as `--max-context` does, so long-prompt tests stay short.
    session = Session(
        model_path,
        capacity=CAPACITY,
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_context=CONTEXT,
    )
    assert all(
        c < e for c, e in zip(session.handle.capacity, session.handle.num_experts, strict=True)
    )
    yield session
    session.close()


@pytest.fixture(scope="session")
def reference(model_path):
    """The unmodified model and tokenizer, loaded by mlx-lm itself."""
    return mlx_lm.load(str(model_path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, app):
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def serve_app():
    """Start servers for a provider on free ports; all stop at the end of the session."""
    servers = []

    def start(provider, **options) -> RunningServer:
        server = RunningServer(create_app(provider, **options))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(serve_app, provider) -> RunningServer:
    return serve_app(provider, max_body_bytes=200_000)
