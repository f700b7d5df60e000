"""Each API reports the prompt tokens a prompt cache held in its own usage field: OpenAI's
`prompt_tokens_details.cached_tokens` (chat and completions), Anthropic's
`cache_read_input_tokens` (the rest in `input_tokens`, streaming too) and the Responses API's
`input_tokens_details.cached_tokens`."""

from __future__ import annotations

import anthropic
import openai
import pytest


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def messages(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me a long story about {topic}, please."}]


def test_openai_chat_reports_cached_tokens(oai, provider):
    first = oai.chat.completions.create(model="m", messages=messages("owls"), max_tokens=3)
    again = oai.chat.completions.create(model="m", messages=messages("owls"), max_tokens=3)
    n = len(provider.encode_prompt(messages("owls")))
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == n
    # The same prompt again: all of it but the last token, which is always fed.
    assert again.usage.prompt_tokens_details.cached_tokens == n - 1
    stream = oai.chat.completions.create(
        model="m",
        messages=messages("owls"),
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens == n - 1


def test_openai_completions_report_cached_tokens(oai):
    prompt = "The lighthouse keeper walked up the stairs and"
    oai.completions.create(model="m", prompt=prompt, max_tokens=2)
    again = oai.completions.create(model="m", prompt=prompt, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_anthropic_reports_cache_reads_apart(claude, provider):
    ask = dict(model="m", max_tokens=3, messages=messages("foxes"))
    first = claude.messages.create(**ask)
    again = claude.messages.create(**ask)
    n = len(provider.encode_prompt(messages("foxes")))
    assert first.usage.input_tokens + first.usage.cache_read_input_tokens == n
    assert again.usage.cache_read_input_tokens == n - 1 and again.usage.input_tokens == 1
    assert again.usage.cache_creation_input_tokens == 0
    with claude.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == n - 1 and final.usage.input_tokens == 1


def test_responses_report_cached_tokens(oai, provider):
    oai.responses.create(model="m", input="Describe the river at dawn.", max_output_tokens=3)
    again = oai.responses.create(
        model="m", input="Describe the river at dawn.", max_output_tokens=3
    )
    assert again.usage.input_tokens_details.cached_tokens == again.usage.input_tokens - 1
