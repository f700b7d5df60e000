"""Reasoning: `<think>` text as reasoning_content (OpenAI chat), thinking blocks (Anthropic) and
reasoning items (Responses), streaming included; each API's switch reaches the template."""

from __future__ import annotations

import anthropic
import openai
import pytest
from _providers import ScriptedProvider

from moe_server._reasoning import Reasoning, ReasoningSplitter

THOUGHT = "<think>\nThe user greets me.\n</think>\n\nHello there."
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def thinker(serve_app, provider):
    scripted = ScriptedProvider(provider, [THOUGHT])
    return scripted, serve_app(scripted)


def _split(pieces: list[str], inside=False) -> list:
    splitter = ReasoningSplitter("<think>", "</think>", inside=inside)
    out = [item for piece in pieces for item in splitter.feed(piece)] + splitter.flush()
    merged: list = []
    for item in out:  # adjacent pieces of one kind joined, as a client would
        if merged and type(merged[-1]) is type(item):
            merged[-1] = (
                merged[-1] + item
                if isinstance(item, str)
                else Reasoning(merged[-1].text + item.text)
            )
        else:
            merged.append(item)
    return merged


def test_splitter_gives_the_same_parts_at_every_split_point():
    want = [Reasoning("The user greets me."), "Hello there."]
    for i in range(len(THOUGHT)):
        for j in range(i, len(THOUGHT)):
            assert _split([THOUGHT[:i], THOUGHT[i:j], THOUGHT[j:]]) == want, (i, j)
    # A template that opened the block itself: the model writes only its end.
    assert _split(["I think.\n</thi", "nk>\n\nDone."], inside=True) == [
        Reasoning("I think."),
        "Done.",
    ]
    assert _split(["plain ", "text < think"]) == ["plain text < think"]
    assert _split(["<think>cut off by max_tokens  "]) == [Reasoning("cut off by max_tokens")]


def test_openai_reasoning_content_stream_and_not(thinker):
    _, server = thinker
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="m", messages=CHAT)
    message = reply.choices[0].message
    assert message.content == "Hello there."
    assert message.reasoning_content == "The user greets me."
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == (
        "The user greets me."
    )
    assert "".join(d.content or "" for d in deltas) == "Hello there."


def test_anthropic_thinking_blocks_stream_and_not(thinker):
    scripted, server = thinker
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    options = dict(model="claude-x", max_tokens=100, messages=CHAT, thinking={"type": "adaptive"})
    reply = client.messages.create(**options)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert reply.content[0].thinking == "The user greets me." and reply.content[0].signature
    assert reply.content[1].text == "Hello there."
    with client.messages.stream(**options) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "The user greets me."
    assert final.content[1].text == "Hello there."
    assert "thinking" in kinds and "signature" in kinds
    # The thinking block comes back in the next request's history: its text reaches the
    # template as reasoning_content.
    history = [
        *CHAT,
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {"role": "user", "content": "And?"},
    ]
    client.messages.create(**{**options, "messages": history})
    assert scripted.prompts[-1][1] == {
        "role": "assistant",
        "content": "Hello there.",
        "reasoning_content": "The user greets me.",
    }


def test_responses_reasoning_item(thinker):
    _, server = thinker
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    response = client.responses.create(model="m", input="Hi")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "The user greets me."
    assert response.output_text == "Hello there."
    with client.responses.stream(model="m", input="Hi") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert final.output_text == "Hello there."


@pytest.mark.parametrize(
    ("api", "options", "want"),
    [
        ("openai", {"reasoning_effort": "none"}, False),
        ("openai", {"reasoning_effort": "high"}, True),
        ("openai", {"extra_body": {"enable_thinking": False}}, False),
        ("openai", {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}, True),
        ("openai", {}, None),
        ("anthropic", {"thinking": {"type": "disabled"}}, False),
        ("anthropic", {"thinking": {"type": "adaptive"}}, True),
        ("anthropic", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
        ("anthropic", {}, None),
        ("responses", {"reasoning": {"effort": "minimal"}}, False),
        ("responses", {"reasoning": {"effort": "low"}}, True),
    ],
)
def test_thinking_switches_reach_the_template(thinker, api, options, want):
    scripted, server = thinker
    if api == "openai":
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(model="m", messages=CHAT, **options)
    elif api == "responses":
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        client.responses.create(model="m", input="Hi", **options)
    else:
        client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        client.messages.create(model="m", max_tokens=50, messages=CHAT, **options)
    kwargs = scripted.options[-1]["chat_template_kwargs"] or {}
    assert kwargs.get("enable_thinking") is want


def test_thinking_off_changes_the_prompt_the_model_sees(server, provider):
    """On the real template: thinking off closes an empty think block in the prompt, which
    count_tokens and usage both count."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    on = client.chat.completions.create(model="m", messages=CHAT, max_tokens=1)
    off = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=1, reasoning_effort="none"
    )
    block = provider.tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    assert off.usage.prompt_tokens == on.usage.prompt_tokens + len(block)
    counter = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    counts = {
        kind: counter.messages.count_tokens(
            model="m", messages=CHAT, thinking={"type": kind}
        ).input_tokens
        for kind in ("adaptive", "disabled")
    }
    assert counts["disabled"] == counts["adaptive"] + len(block)
