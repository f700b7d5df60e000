"""The OpenAI API, driven by the official openai client against a real server."""

from __future__ import annotations

import json

import mlx_lm
import openai
import pytest
from _providers import ScriptedProvider

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_loaded_model(client, provider):
    models = client.models.list().data
    assert [m.id for m in models] == [provider.model_id]
    assert models[0].owned_by and models[0].created > 0


def test_chat_matches_the_model_and_reports_usage(client, provider, reference):
    misses = provider.stats()["misses"]
    reply = client.chat.completions.create(
        model="gpt-4o", messages=CHAT, max_tokens=8, temperature=0
    )
    assert reply.model == provider.model_id  # any name is served by the loaded model, named
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    model, tokenizer = reference
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert provider.encode_prompt(CHAT) == ids
    # The unmodified model's answer, through a session that had to read experts from disk.
    assert choice.message.content == mlx_lm.generate(model, tokenizer, ids, max_tokens=8)
    assert provider.stats()["misses"] > misses
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == 8
    assert reply.usage.total_tokens == len(ids) + 8


def test_streamed_chat_equals_the_whole_reply_and_ends_with_usage(client):
    whole = client.chat.completions.create(model="m", messages=CHAT, max_completion_tokens=10)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=CHAT,
            max_completion_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_seed_makes_sampling_repeatable(client):
    def sample(seed):
        return (
            client.chat.completions.create(
                model="m", messages=CHAT, max_tokens=12, temperature=1.0, top_p=0.95, seed=seed
            )
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_stop_string_cuts_the_reply(client):
    free = client.completions.create(model="m", prompt="The expert", max_tokens=16).choices[0].text
    stop = free[5:7]
    assert stop and stop in free
    for stops in (stop, [stop, "never-appears"]):
        cut = client.completions.create(model="m", prompt="The expert", max_tokens=16, stop=stops)
        assert cut.choices[0].text == free[: free.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
        assert cut.usage.completion_tokens < 16


def test_completions_stream_and_not(client, reference):
    whole = client.completions.create(model="m", prompt="Once upon", max_tokens=6)
    model, tokenizer = reference
    assert whole.choices[0].text == mlx_lm.generate(model, tokenizer, "Once upon", max_tokens=6)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6
    chunks = list(
        client.completions.create(model="m", prompt="Once upon", max_tokens=6, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_TEXT = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tool_server(serve_app, provider):
    scripted = ScriptedProvider(provider, [TOOL_TEXT, "It is sunny in Paris."])
    return scripted, serve_app(scripted)


def test_tool_call_round_trip_streaming(tool_server):
    scripted, server = tool_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    chunks = list(
        client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True)
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    assert text == "Let me check."
    parts = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert parts[0].index == 0 and parts[0].id and parts[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in parts)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert scripted.prompts[-1] == [{"role": "user", "content": "Weather in Paris?"}]

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": parts[0].id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": parts[0].id, "content": "sunny, 21C"},
    ]
    answer = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == "It is sunny in Paris."
    assert answer.choices[0].finish_reason == "stop"
    # The history reached the template in its format: arguments as an object, role "tool".
    history = scripted.prompts[-1]
    assert history[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert history[2] == {"role": "tool", "tool_call_id": parts[0].id, "content": "sunny, 21C"}
    rendered = scripted.tokenizer.decode(scripted.encode_prompt(history, TOOLS))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
    assert "<tool_response>\nsunny, 21C" in rendered


def test_tool_call_non_streaming_and_tool_choice_none(tool_server):
    scripted, server = tool_server
    scripted.calls = 0
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content == "Let me check."
    # With tool_choice "none" the tools are hidden and the markers come back as plain text.
    scripted.calls = 0
    plain = client.chat.completions.create(
        model="m", messages=CHAT, tools=TOOLS, tool_choice="none"
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content == TOOL_TEXT
    assert plain.choices[0].finish_reason == "stop"


def test_tool_call_cut_by_max_tokens_finishes_cleanly(tool_server):
    scripted, server = tool_server
    scripted.calls = 0
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    cut = len(scripted.tokenizer.encode(TOOL_TEXT, add_special_tokens=False)) - 6
    reply = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, max_tokens=cut)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == "Let me check."


def test_models_report_the_context_length(client, provider, server):
    model = client.models.retrieve(provider.model_id)
    assert model.id == provider.model_id and model.object == "model"
    # The session's one context limit (lowered to 1500 in these tests, as --max-context does).
    assert model.context_length == model.max_model_len == provider.max_context == 1500
    assert client.models.list().data[0].context_length == model.context_length
    # The miss mode, labelled (a lossy one would say so).
    assert model.moe == {"miss": "exact", "lossy": False}
