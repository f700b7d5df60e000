"""The server's limits: one context limit, the session's, refused before any work in each API's
shape."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest


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
