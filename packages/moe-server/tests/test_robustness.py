"""Errors in each API's shape, auth, limits, failures mid-stream, disconnects, and load."""

from __future__ import annotations

import concurrent.futures
import time

import anthropic
import httpx
import openai
import pytest
from _providers import ScriptedProvider

from moe_server import BindError, check_bind

CHAT = [{"role": "user", "content": "hi"}]


def _openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": CHAT, "n": 2}, "n"),
        ({"model": "m", "messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "m", "messages": CHAT, "logprobs": True, "top_logprobs": 99}, "top_logprobs"),
        (
            {"model": "m", "messages": CHAT, "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        (
            {
                "model": "m",
                "messages": CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "string", "pattern": "(unclosed"}},
                },
            },
            "response_format",
        ),
        ({"model": "m", "messages": CHAT, "presence_penalty": 3}, "presence_penalty"),
        ({"model": "m", "messages": CHAT, "logit_bias": {"99999": 1}}, "logit_bias.99999"),
        ({"model": "m", "messages": CHAT, "reasoning_effort": "max"}, "reasoning_effort"),
        (
            {
                "model": "m",
                "messages": CHAT,
                "tool_choice": {"type": "function", "function": {"name": "g"}},
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tool_choice",
        ),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": CHAT, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "word " * 1000}]}, "messages"),
    ],
)
def test_openai_rejects_bad_requests(server, body, param):
    error = _openai_error(httpx.post(server.url + "/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_openai_client_sees_400_and_malformed_json_is_400(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="m", messages=CHAT, n=3)
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in _openai_error(response, 400)["message"]
    assert _openai_error(httpx.post(server.url + "/v1/completions", json=[1, 2]), 400)
    assert _openai_error(httpx.get(server.url + "/v1/nothing"), 404)


def test_body_size_is_limited(server):
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 300_000}]}
    _openai_error(httpx.post(server.url + "/v1/chat/completions", json=big), 413)
    response = httpx.post(server.url + "/v1/messages", json={**big, "max_tokens": 5})
    assert response.status_code == 413 and response.json()["type"] == "error"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "m", "messages": CHAT}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"max_tokens": 5, "messages": CHAT}, "model"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image"}]}],
            },
            "image",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": CHAT,
                "tool_choice": {"type": "tool", "name": "g"},
                "tools": [{"name": "f", "input_schema": {}}],
            },
            "tool_choice",
        ),
        ({"model": "m", "max_tokens": 5, "messages": CHAT, "thinking": {"type": "x"}}, "thinking"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": CHAT,
                "output_config": {"format": {"type": "json_schema", "schema": {"pattern": "("}}},
            },
            "output_config.format",
        ),
        ({"model": "m", "max_tokens": "five", "messages": CHAT}, "max_tokens"),
    ],
)
def test_anthropic_rejects_bad_requests(server, body, needle):
    response = httpx.post(server.url + "/v1/messages", json=body)
    assert response.status_code == 400
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert needle in data["error"]["message"]


def test_anthropic_client_sees_400(server):
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0).messages.create(
            model="m",
            max_tokens=5,
            messages=CHAT,
            tool_choice={"type": "tool", "name": "missing"},
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        )


def test_api_key_is_required_when_set(serve_app, provider):
    server = serve_app(provider, api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret").models.list().data
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model="m", max_tokens=2, messages=CHAT
        )
    assert caught.value.body["error"]["type"] == "authentication_error"
    reply = anthropic.Anthropic(base_url=server.url, api_key="s3cret").messages.create(
        model="m", max_tokens=2, messages=CHAT
    )
    assert reply.usage.output_tokens == 2
    assert httpx.get(server.url + "/health").status_code == 200


def test_check_bind_refuses_exposed_addresses_without_a_key():
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "key")
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(BindError, match="API key"):
            check_bind(host, None)


def test_generation_error_ends_the_stream_and_the_server_stays_up(serve_app, provider, server):
    failing = serve_app(ScriptedProvider(provider, ["one two three four five six"], fail_after=3))
    client = openai.OpenAI(base_url=failing.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="scripted failure"):
        list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    assert (
        _openai_error(
            httpx.post(failing.url + "/v1/chat/completions", json={"model": "m", "messages": CHAT}),
            500,
        )["type"]
        == "server_error"
    )
    raw = httpx.post(
        failing.url + "/v1/messages",
        json={"model": "m", "max_tokens": 50, "messages": CHAT, "stream": True},
    ).text
    assert "event: error" in raw and "api_error" in raw and "message_stop" not in raw
    with pytest.raises(anthropic.APIStatusError):
        anthropic.Anthropic(base_url=failing.url, api_key="x", max_retries=0).messages.create(
            model="m", max_tokens=50, messages=CHAT
        )
    assert httpx.get(failing.url + "/health").json()["status"] == "ok"


def test_disconnect_cancels_the_generation_and_health_answers_meanwhile(serve_app, provider):
    slow = ScriptedProvider(provider, delay=0.02)
    server = serve_app(slow)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=CHAT, max_tokens=500, stream=True)
    for received, _ in enumerate(stream, start=1):
        if received == 5:
            started = time.perf_counter()
            health = httpx.get(server.url + "/health").json()
            assert time.perf_counter() - started < 0.5  # the event loop is not running the model
            assert health["running"] == 1
            break
    stream.close()
    deadline = time.monotonic() + 10
    while slow.closed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.closed == 1 and slow.yielded < 500  # the worker stopped pulling tokens
    reply = client.chat.completions.create(model="m", messages=CHAT, max_tokens=3)
    # The first three tokens of the script, as the fixture's tokenizer splits it.
    ids = slow.tokenizer.encode("word " * 1000, add_special_tokens=False)[:3]
    want = slow.tokenizer.decode(ids)
    assert reply.usage.completion_tokens == 3 and reply.choices[0].message.content == want


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages"])
def test_disconnect_cancels_a_non_streaming_generation(serve_app, provider, path):
    slow = ScriptedProvider(provider, delay=0.02)
    server = serve_app(slow)
    body = {"model": "m", "max_tokens": 500}
    body |= {"prompt": "hi"} if path == "/v1/completions" else {"messages": CHAT}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + path, json=body, timeout=0.5)  # gives up, closing the socket
    deadline = time.monotonic() + 10
    while slow.closed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # 500 tokens take 10 s; the worker stopped soon after the client left.
    assert slow.closed == 1 and slow.yielded < 150
    assert httpx.get(server.url + "/health").json()["running"] == 0


def test_sixteen_clients_are_answered_or_refused_cleanly(serve_app, provider):
    slow = ScriptedProvider(provider, delay=0.01)
    server = serve_app(slow, max_queue=4)
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    an = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)

    def one(i: int) -> str:
        try:
            if i % 2:
                oa.chat.completions.create(model="m", messages=CHAT, max_tokens=10)
            else:
                an.messages.create(model="m", max_tokens=10, messages=CHAT)
            return "ok"
        except openai.RateLimitError as e:
            assert e.response.headers["retry-after"]
            return "refused"
        except anthropic.InternalServerError as e:
            assert e.status_code == 529 and e.body["error"]["type"] == "overloaded_error"
            assert e.response.headers["retry-after"]
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    assert outcomes.count("ok") >= 5 and outcomes.count("refused") >= 1
    assert outcomes.count("ok") + outcomes.count("refused") == 16
    health = httpx.get(server.url + "/health").json()
    assert health == {"status": "ok", "model": provider.model_id, "queue_depth": 0, "running": 0}
    metrics = httpx.get(server.url + "/metrics").text
    assert 'moe_requests_total{endpoint="/v1/chat/completions",status="429"}' in metrics
    assert f"moe_generations_total {outcomes.count('ok')}" in metrics
    assert "moe_expert_hit_rate 0.75" in metrics and "moe_expert_bytes_read_total 4096" in metrics
    assert "moe_time_to_first_token_seconds_count" in metrics


def test_sixteen_clients_on_the_real_model_all_answered(serve_app, provider):
    server = serve_app(provider, max_queue=16)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(
                lambda i: client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4
                ),
                range(16),
            )
        )
    assert all(r.usage.completion_tokens == 4 for r in replies)
    assert httpx.get(server.url + "/health").json()["queue_depth"] == 0


def test_slow_streams_are_kept_alive(serve_app, provider, monkeypatch):
    """A long prefill sends nothing for minutes: streams carry keepalives meanwhile (Anthropic
    `ping` events, SSE comments for OpenAI) that the official clients skip."""
    from moe_server import _anthropic, _openai_bodies

    monkeypatch.setattr(_anthropic, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(_openai_bodies, "KEEPALIVE_S", 0.05)
    scripted = ScriptedProvider(provider, ["Slow but sure."], delay=0.3)
    server = serve_app(scripted)
    body = {"model": "m", "max_tokens": 50, "messages": CHAT, "stream": True}
    raw = httpx.post(server.url + "/v1/messages", json=body, timeout=30).text
    assert raw.count("event: ping") > 2
    with anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0).messages.stream(
        model="m", max_tokens=50, messages=CHAT
    ) as stream:
        assert stream.get_final_message().content[0].text == "Slow but sure."
    raw = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).text
    assert raw.count(": keepalive") > 2
    chunks = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in chunks.chat.completions.create(model="m", messages=CHAT, stream=True)
        if c.choices
    )
    assert text == "Slow but sure."
