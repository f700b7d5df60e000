"""Stopping the server (uvicorn as `serve` runs it): new work refused, queued requests answered
with the API's error at once, the running one given a grace period and then ended with the API's
error event, never cut silently. `moe serve` under SIGTERM: moe-cli's test_serve_shutdown.py."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from _providers import ScriptedProvider
from conftest import _free_port

from moe_server import create_app
from moe_server._serve import _Server
from moe_server._worker import Job, ShuttingDown

CHAT = [{"role": "user", "content": "hi"}]
GRACE = 0.6


def _start(provider, grace: float, **options):
    app = create_app(provider, **options)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    config.timeout_graceful_shutdown = grace + 3
    server = _Server(config, worker=app.state.engine.worker, grace=grace)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    return app, server, thread, f"http://127.0.0.1:{port}"


def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_shutdown_answers_queued_requests_and_ends_the_running_one_with_an_error(provider):
    slow = ScriptedProvider(provider, delay=0.02)  # 1000 tokens: 20 s, far past the grace
    app, server, thread, url = _start(slow, GRACE)
    worker = app.state.engine.worker
    running = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    stream = running.chat.completions.create(model="m", messages=CHAT, max_tokens=1000, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks)  # the generation is running
    outcomes: dict[str, object] = {}

    def queued_stream():
        body = {"model": "m", "max_tokens": 50, "messages": CHAT, "stream": True}
        with httpx.stream("POST", url + "/v1/messages", json=body, timeout=30) as response:
            outcomes["stream_status"] = response.status_code
            outcomes["stream"] = response.read().decode()
            outcomes["stream_at"] = time.monotonic()

    def queued_plain():
        body = {"model": "m", "max_tokens": 50, "messages": CHAT}
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        outcomes["plain"] = response
        outcomes["plain_at"] = time.monotonic()

    clients = [threading.Thread(target=f) for f in (queued_stream, queued_plain)]
    for client in clients:
        client.start()
    _until(lambda: worker.waiting == 2)
    stopped_at = time.monotonic()
    server.should_exit = True  # what SIGTERM does
    for client in clients:
        client.join(10)
    # Queued: answered at once, each in its API's shape.
    assert outcomes["plain_at"] - stopped_at < GRACE and outcomes["stream_at"] - stopped_at < GRACE
    plain = outcomes["plain"]
    assert plain.status_code == 503
    assert plain.json()["error"]["code"] == "server_shutting_down"
    assert outcomes["stream_status"] == 200  # the stream had started: its error is an event
    frames = [f for f in outcomes["stream"].split("\n\n") if f.strip()]
    assert frames[-1].startswith("event: error\n")
    error = json.loads(frames[-1].split("data: ", 1)[1])
    assert error["error"]["type"] == "overloaded_error"  # what Anthropic's clients retry
    # Running: ends with the API's error event once the grace is over, not cut.
    with pytest.raises(openai.APIError, match="shutting down"):
        for _ in chunks:
            pass
    ended_at = time.monotonic()
    assert GRACE <= ended_at - stopped_at < GRACE + 3
    assert slow.yielded < 1000 and slow.closed == 1
    thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(httpx.ConnectError):  # and nothing more is taken
        httpx.get(url + "/health", timeout=2)


def test_a_running_request_shorter_than_the_grace_finishes(provider):
    slow = ScriptedProvider(provider, ["one two three four five six seven eight"], delay=0.05)
    app, server, thread, url = _start(slow, grace=10)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    stream = iter(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    first = next(stream)
    server.should_exit = True
    text = first.choices[0].delta.content + "".join(
        c.choices[0].delta.content or "" for c in stream if c.choices
    )
    assert text == "one two three four five six seven eight"
    thread.join(10)
    assert not thread.is_alive()
    # A draining worker takes nothing new.
    with pytest.raises(ShuttingDown):
        app.state.engine.worker.submit(
            Job(prompt=CHAT, sampling={}, stops=[], tools=None, prompt_tokens=1, loop=None)
        )
