"""The server's limits: one context limit, the session's, refused before any work in each API's
shape."""

from __future__ import annotations

import concurrent.futures
import math
import time

import anthropic
import httpx
import openai
import pytest
from _providers import ScriptedProvider

CHAT = [{"role": "user", "content": "hi"}]
TEN_WORDS = "one two three four five six seven eight nine ten"


def _words_over(provider, tokens: int) -> str:
    """A message text whose chat prompt is over `tokens` tokens."""
    text = "word " * tokens
    assert len(provider.encode_prompt([{"role": "user", "content": text}])) > tokens
    return text


def test_a_prompt_over_the_context_is_a_400_in_each_apis_shape_before_any_work(server, provider):
    """The tests' server has no limit of its own (none exists): the session's is the one."""
    limit = provider.max_context
    text = _words_over(provider, limit)
    requests = provider.stats()["session"]["requests"]
    url = server.url
    chat = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        chat.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}], max_tokens=5
        )
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["type"] == "invalid_request_error" and f"is {limit} tokens" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        chat.completions.create(model="m", prompt=text, max_tokens=5)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as caught:
        chat.responses.create(model="m", input=text, max_output_tokens=5)
    assert caught.value.body["param"] == "input"
    claude = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(
                model="m",
                max_tokens=5,
                messages=[{"role": "user", "content": text}],
                stream=stream,
            )
        body = caught.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        # Anthropic's wording, which Claude Code reads to compact the conversation.
        assert body["error"]["message"].startswith("prompt is too long: ")
        assert body["error"]["message"].endswith(f" tokens > {limit - 1} maximum")
    assert provider.stats()["session"]["requests"] == requests  # nothing reached the model
    fits = [{"role": "user", "content": "word " * 10}]
    assert chat.chat.completions.create(model="m", messages=fits, max_tokens=5).choices


def test_models_report_the_one_limit(server, provider):
    [model] = httpx.get(server.url + "/v1/models").json()["data"]
    assert model["context_length"] == model["max_input_tokens"] == provider.max_context


def test_sixteen_clients_with_default_retries_all_get_answers(serve_app, provider):
    """A full queue says when a slot should free, so the official clients' own two retries are
    enough for 16 clients on a queue of 4. With a fixed `Retry-After: 1` they all came back at
    once and several ran out of retries."""
    slow = ScriptedProvider(provider, [TEN_WORDS], delay=0.04)  # about 0.4 s a request
    server = serve_app(slow, max_queue=4)
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x")  # max_retries: the default, 2
    an = anthropic.Anthropic(base_url=server.url, api_key="x")
    # One job first, so the server knows how long one takes.
    want = oa.chat.completions.create(model="m", messages=CHAT).usage.completion_tokens

    def one(i: int) -> int:
        if i % 2:
            return oa.chat.completions.create(model="m", messages=CHAT).usage.completion_tokens
        return an.messages.create(model="m", max_tokens=50, messages=CHAT).usage.output_tokens

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == [want] * 16


def test_refused_clients_are_sent_back_one_job_apart(serve_app, provider):
    slow = ScriptedProvider(provider, [TEN_WORDS], delay=0.05)
    server = serve_app(slow, max_queue=2)
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {"model": "m", "messages": CHAT}
    started = time.perf_counter()
    client.post("/v1/chat/completions", json=body)  # one job timed
    job = time.perf_counter() - started
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(client.post, "/v1/chat/completions", json=body) for _ in range(3)]
        deadline = time.monotonic() + 10
        while client.get("/health").json()["queue_depth"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first, second = (client.post("/v1/chat/completions", json=body) for _ in range(2))
        assert all(f.result().status_code == 200 for f in busy)
    assert first.status_code == second.status_code == 429
    waits = [int(r.headers["retry-after-ms"]) / 1000 for r in (first, second)]
    assert 0 < waits[0] <= 2 * job  # the rest of the running job, and half a job
    assert waits[1] - waits[0] == pytest.approx(job, rel=0.5)  # then one more job
    assert first.headers["retry-after"] == str(max(1, math.ceil(waits[0])))
