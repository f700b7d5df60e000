"""A client that leaves during a long prompt's prefill frees the worker at the next prefill chunk,
and the chunks already fed stay in the prompt cache for the next request."""

from __future__ import annotations

import time

import httpx
import pytest
from _fixture_model import CAPACITY

from moe_runtime import Session

CHUNK = 32  # tokens per prefill chunk here: many chunks from a prompt the fixture model takes


@pytest.fixture(scope="module")
def chunked(serve_app, model_path, tmp_path_factory):
    with Session(model_path, capacity=CAPACITY, cache_dir=tmp_path_factory.mktemp("c")) as session:
        session._cache.prefill_step_size = CHUNK
        server = serve_app(session)
        yield session, server
        server.stop()


def _until(condition, timeout=30.0, step=0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(step)


@pytest.mark.parametrize("stream", [True, False])
def test_leaving_during_prefill_frees_the_worker_at_the_next_chunk(chunked, stream):
    session, server = chunked
    worker = server.app.state.engine.worker
    numbers = " ".join(str(n) for n in range(1000, 1000 + 700, 1 + stream))  # a new prompt
    messages = [{"role": "user", "content": numbers}]
    prompt = session.encode_prompt(messages)
    assert len(prompt) > 40 * CHUNK
    before = session.stats()["session"]
    body = {"model": "m", "messages": messages, "max_tokens": 5, "stream": stream}
    client = httpx.Client(base_url=server.url, timeout=60)
    feeding = lambda: 2 * CHUNK <= len(session._cache.tokens) < len(prompt) // 2  # noqa: E731
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()  # kept: dropping it would close the connection
            next(lines)
            _until(feeding)
        left = time.monotonic()  # the connection is closed here
    else:
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up, closing the socket
            client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
        left = time.monotonic()
    _until(lambda: worker.running == 0)
    freed = time.monotonic() - left
    held = len(session._cache.tokens)
    after = session.stats()["session"]
    assert held < len(prompt) - 1  # the prefill stopped early, between two chunks
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["requests"] == before["requests"]  # it never reached the first token
    print(f"stream={stream}: worker free {freed * 1000:.0f} ms after the client left")
    # The chunks fed before the client left are reused by the next request with this prompt.
    reply = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert reply["usage"]["prompt_tokens"] == len(prompt)
    assert (
        session.stats()["session"]["prefix_tokens_reused"] >= after["prefix_tokens_reused"] + held
    )
