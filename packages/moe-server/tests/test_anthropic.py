"""The Anthropic Messages API, driven by the official anthropic client against a real server."""

from __future__ import annotations

import json

import anthropic
import httpx
import mlx_lm
import pytest
from _providers import ScriptedProvider

USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def prompt_tokens(usage) -> int:
    """The whole prompt: Anthropic counts what came from the prompt cache apart."""
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def test_message_reports_text_stop_reason_and_usage(client, provider, reference):
    reply = client.messages.create(
        model="claude-test-model", max_tokens=8, messages=USER, system="Be brief."
    )
    assert reply.model == provider.model_id  # the model that answered, whatever was asked
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
    assert reply.content[0].type == "text" and reply.content[0].text
    ids = provider.encode_prompt([{"role": "system", "content": "Be brief."}, *USER])
    assert prompt_tokens(reply.usage) == len(ids)
    assert reply.usage.output_tokens == 8
    model, tokenizer = reference
    assert reply.content[0].text == mlx_lm.generate(model, tokenizer, ids, max_tokens=8)


def test_system_blocks_and_content_blocks_equal_plain_strings(client):
    plain = client.messages.create(model="m", max_tokens=6, system="Be brief.", messages=USER)
    blocks = client.messages.create(
        model="m",
        max_tokens=6,
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
    )
    assert blocks.content[0].text == plain.content[0].text
    assert prompt_tokens(blocks.usage) == prompt_tokens(plain.usage)


def test_stream_sends_the_full_event_sequence(server, client):
    whole = client.messages.create(model="m", max_tokens=10, messages=USER)
    with client.messages.stream(model="m", max_tokens=10, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10

    body = {"model": "m", "max_tokens": 4, "messages": USER, "stream": True}
    text = httpx.post(server.url + "/v1/messages", json=body, timeout=30).text
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_stop_sequence_is_reported(client):
    free = client.messages.create(model="m", max_tokens=16, messages=USER).content[0].text
    stop = free[4:6]
    cut = client.messages.create(model="m", max_tokens=16, messages=USER, stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == free[: free.index(stop)]


def test_count_tokens_matches_the_template(client, provider):
    counted = client.messages.count_tokens(model="claude-x", messages=USER, system="Be brief.")
    assert counted.input_tokens == len(
        provider.encode_prompt([{"role": "system", "content": "Be brief."}, *USER])
    )


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
TOOL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_tool_use_round_trip(serve_app, provider):
    scripted = ScriptedProvider(provider, [TOOL_TEXT, "Cold in Oslo."])
    server = serve_app(scripted)
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    with client.messages.stream(
        model="claude-x", max_tokens=200, messages=messages, tools=TOOLS
    ) as s:
        first = s.get_final_message()
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Oslo"}

    messages += [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": [{"type": "text", "text": "-3C"}],
                }
            ],
        },
    ]
    answer = client.messages.create(
        model="claude-x", max_tokens=200, messages=messages, tools=TOOLS
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "Cold in Oslo."
    history = scripted.prompts[-1]
    assert history[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    assert history[2] == {"role": "tool", "tool_call_id": use.id, "content": "-3C"}
    # Non-streaming tool use, with the JSON in input_json_delta parsed by the client above.
    scripted.calls = 0
    again = client.messages.create(
        model="claude-x", max_tokens=200, messages=messages[:1], tools=TOOLS
    )
    assert again.content[0].input == {"city": "Oslo"} and again.stop_reason == "tool_use"
    scripted.calls = 0
    raw = httpx.post(
        server.url + "/v1/messages",
        timeout=30,
        json={
            "model": "m",
            "max_tokens": 200,
            "messages": messages[:1],
            "tools": TOOLS,
            "stream": True,
        },
    ).text
    deltas = [
        json.loads(line[6:])["delta"]
        for line in raw.splitlines()
        if line.startswith("data: ") and '"content_block_delta"' in line
    ]
    assert deltas[0]["type"] == "input_json_delta"


def test_every_request_shape_claude_code_sends_is_accepted(serve_app, provider):
    """System blocks with cache_control, system-role messages anywhere, thinking configs,
    ?beta=true, anthropic-beta headers, metadata, context_management, output_config.effort,
    tool_choice auto/any/tool/none, and a max_tokens far beyond the context."""
    scripted = ScriptedProvider(provider, ["Fine."])
    server = serve_app(scripted)
    client = anthropic.Anthropic(
        base_url=server.url,
        api_key="x",
        max_retries=0,
        default_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
    )
    tools = [{"name": "f", "description": "F.", "input_schema": {"type": "object"}}]
    base = dict(
        model="claude-x-test",
        max_tokens=32000,
        system=[
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Agents available: none."},
        ],
        metadata={"user_id": "someone"},
        extra_query={"beta": "true"},
        extra_body={
            "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
            "output_config": {"effort": "high"},
        },
    )
    for thinking in ({"type": "adaptive"}, {"type": "enabled", "budget_tokens": 2000}, None):
        for choice in (None, {"type": "auto"}, {"type": "none"}):
            extra = {"thinking": thinking} if thinking else {}
            extra |= {"tool_choice": choice} if choice else {}
            with client.messages.stream(**base, tools=tools, **extra) as stream:
                reply = stream.get_final_message()  # streaming, as Claude Code asks
            assert reply.content[0].text == "Fine." and reply.stop_reason == "end_turn"
    prompt = scripted.prompts[-1]
    assert prompt == [
        {"role": "system", "content": "You are Claude Code.Be brief."},
        {"role": "user", "content": "<system-reminder>ctx</system-reminder>Hi"},
        {"role": "system", "content": "Agents available: none."},
    ]
    assert scripted.options[-1]["max_tokens"] == 32000  # the session ends it at its context


def test_huge_max_tokens_ends_at_the_context(serve_app, provider):
    """On the real session: max_tokens beyond the context is clamped, not refused."""
    server = serve_app(provider)
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    limit = provider.max_context

    def tokens(k: int) -> int:
        return len(provider.encode_prompt([{"role": "user", "content": "word " * k}]))

    low, high = 0, limit  # the most words whose prompt leaves room for a few tokens
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if tokens(mid) <= limit - 5 else (low, mid - 1)
    text = "word " * low
    ids = provider.encode_prompt([{"role": "user", "content": text}])
    assert limit - 40 < len(ids) < limit
    with client.messages.stream(
        model="m", max_tokens=32000, messages=[{"role": "user", "content": text}]
    ) as stream:
        reply = stream.get_final_message()
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == provider.max_context - len(ids)


def test_count_tokens_counts_tools_and_system_like_messages(client, provider, server):
    tools = [{"name": "f", "description": "F.", "input_schema": {"type": "object"}}]
    messages = [*USER, {"role": "system", "content": "Later rule."}]
    counted = client.messages.count_tokens(
        model="m", messages=messages, tools=tools, system="Be brief."
    ).input_tokens
    converted = [
        {"role": "system", "content": "Be brief."},
        *USER,
        {"role": "system", "content": "Later rule."},
    ]
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object"}, "description": "F."},
    }
    assert counted == len(provider.encode_prompt(converted, [tool]))
    assert counted > client.messages.count_tokens(model="m", messages=messages).input_tokens
    reply = client.messages.create(
        model="m", max_tokens=1, messages=messages, tools=tools, system="Be brief."
    )
    assert prompt_tokens(reply.usage) == counted


def test_models_in_anthropic_shape(client, provider, server):
    [model] = client.models.list().data
    assert model.type == "model" and model.id == provider.model_id
    assert model.created_at.year >= 2024 and model.display_name
    assert client.models.retrieve("claude-x-test").id == provider.model_id  # what would answer
    raw = httpx.get(server.url + "/v1/models").json()
    assert raw["has_more"] is False and raw["first_id"] == provider.model_id
    assert raw["data"][0]["max_input_tokens"] == provider.max_context == 1500
