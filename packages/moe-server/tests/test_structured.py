"""Structured output (JSON formats, forced tool calls) decoded under llguidance's grammar,
logprobs, and mlx-lm's penalties, on the real offloaded session: a random-weight model follows
a schema only because the grammar masks every other token."""

from __future__ import annotations

import json
import math

import anthropic
import mlx.core as mx
import mlx_lm
import openai
import pytest
from mlx_lm.sample_utils import make_logits_processors

CHAT = [{"role": "user", "content": "Is the cache warm?"}]
# Bounded, so even a random model finishes it within a few tokens.
ANSWER = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["C", "F"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def test_json_schema_output_follows_the_schema(client):
    for stream in (False, True):
        options = dict(
            model="m",
            messages=CHAT,
            max_tokens=40,
            reasoning_effort="none",
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}},
        )
        if stream:
            chunks = list(client.chat.completions.create(**options, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            reply = client.chat.completions.create(**options)
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert finish == "stop"
        value = json.loads(text)
        assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
        assert set(value) == {"answer", "sure"}


def test_unconstrained_model_does_not_write_json(client):
    """The check above means something: the same request without a format is not JSON."""
    reply = client.chat.completions.create(model="m", messages=CHAT, max_tokens=40)
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.choices[0].message.content)


def test_json_object_starts_an_object(client):
    reply = client.chat.completions.create(
        model="m",
        messages=CHAT,
        max_tokens=24,
        reasoning_effort="none",
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].message.content.startswith("{")


def test_forced_tool_calls(client, server):
    for choice, name in (
        ("required", None),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ):
        reply = client.chat.completions.create(
            model="m",
            messages=CHAT,
            max_tokens=60,
            tools=[WEATHER, CLOCK],
            tool_choice=choice,
            reasoning_effort="none",
        )
        [call] = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls"
        assert call.function.name in ("get_weather", "get_time")
        if name:
            assert call.function.name == name
        arguments = json.loads(call.function.arguments)
        assert arguments in ({"unit": "C"}, {"unit": "F"}, {})
    # Anthropic's tool_choice any and tool, on the same grammar.
    messages = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0).messages
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        reply = messages.create(
            model="claude-x",
            max_tokens=60,
            messages=CHAT,
            tools=tools,
            tool_choice=choice,
            thinking={"type": "disabled"},
        )
        assert reply.stop_reason == "tool_use"
        assert [(b.type, b.name) for b in reply.content] == [("tool_use", "get_weather")]
        assert reply.content[0].input in ({"unit": "C"}, {"unit": "F"})


def test_anthropic_output_config_format(server):
    messages = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0).messages
    reply = messages.create(
        model="claude-x",
        max_tokens=40,
        messages=CHAT,
        thinking={"type": "disabled"},
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": ANSWER}}},
    )
    assert json.loads(reply.content[0].text)["answer"] in ("yes", "no")


def test_logprobs_are_the_models(client, provider, reference):
    reply = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    model, tokenizer = reference
    ids = provider.encode_prompt(CHAT)
    want = [
        (r.token, r.logprobs)
        for r in mlx_lm.stream_generate(model, tokenizer, mx.array(ids), max_tokens=6)
    ]
    for entry, (token, logprobs) in zip(content, want, strict=True):
        assert entry.token == tokenizer.decode([token])
        assert math.isclose(entry.logprob, logprobs[token].item(), abs_tol=1e-4)
        top = [t.logprob for t in entry.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert math.isclose(top[0], entry.logprob, abs_tol=1e-6)  # greedy took the likeliest
    chunks = list(
        client.chat.completions.create(
            model="m", messages=CHAT, max_tokens=6, logprobs=True, stream=True
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    legacy = client.completions.create(model="m", prompt="The expert", max_tokens=4, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 2
    assert "".join(lp.tokens) == legacy.choices[0].text


def test_presence_and_frequency_penalties_are_mlx_lms(client, provider, reference):
    reply = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=12, presence_penalty=1.5, frequency_penalty=1.0
    )
    model, tokenizer = reference
    processors = make_logits_processors(None, None, 20, 1.5, 20, 1.0, 20)
    ids = provider.encode_prompt(CHAT)
    want = mlx_lm.generate(model, tokenizer, ids, max_tokens=12, logits_processors=processors)
    assert reply.choices[0].message.content == want
    plain = client.chat.completions.create(model="m", messages=CHAT, max_tokens=12)
    assert plain.choices[0].message.content != want


def test_grammar_waits_while_the_model_thinks(provider):
    """A thinking model thinks first: the mask starts after its think end token."""
    from moe_server._structured import GrammarProcessor, json_grammar, ll_tokenizer

    tokenizer = provider.tokenizer
    start, end = tokenizer.think_start_id, tokenizer.think_end_id
    vocab = len(tokenizer.get_vocab())
    brace = tokenizer.encode("{", add_special_tokens=False)[0]
    processor = GrammarProcessor(
        ll_tokenizer(tokenizer), json_grammar(None), think_start=start, think_end=end
    )
    logits = mx.zeros((1, vocab))
    prompt = mx.array(provider.encode_prompt(CHAT))

    def allowed(tokens):
        row = (processor(tokens, logits)[0] > -mx.inf).tolist()
        return {i for i, ok in enumerate(row) if ok}

    assert allowed(prompt) == {brace, start}  # an object, or thinking first
    thinking = mx.concatenate([prompt, mx.array([start])])
    assert len(allowed(thinking)) == vocab  # free while it thinks
    assert len(allowed(mx.concatenate([thinking, mx.array([7])]))) == vocab
    done = mx.concatenate([thinking, mx.array([7, end])])
    assert allowed(done) == {brace}
