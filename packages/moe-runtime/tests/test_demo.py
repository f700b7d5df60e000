"""The shipped demo model: a Session with no model argument opens it, offloaded below its expert
count, and its greedy continuation of Python source equals the unmodified mlx-lm model's."""

from __future__ import annotations

import mlx_lm
from mlx_lm.generate import stream_generate

from moe_runtime import Session, demo_model_path

PROMPT = "def fibonacci(n):"
TOKENS = 24
CAPACITY = 16  # of 64 experts per layer, top-4


def test_demo_model_matches_mlx_lm_when_offloaded(tmp_path):
    model, tokenizer = mlx_lm.load(str(demo_model_path()))
    want = [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=TOKENS)]
    del model

    with Session(capacity=CAPACITY, cache_dir=tmp_path) as s:
        assert s.model_path == demo_model_path()
        assert s.handle.capacity == [CAPACITY] * 8
        assert s.handle.num_experts == [64] * 8
        got = [r.token for r in s.stream(PROMPT, max_tokens=TOKENS)]
        assert s.stats()["misses"] > 0  # experts really were read on demand

    assert got == want
    text = tokenizer.decode(got)
    # Trained on Python source: it continues a def with a docstring or code.
    assert any(word in text for word in ('"""', "return", "if ", "(", ">>> ", "import ")), text


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": "string"}},
                "required": [arg],
            },
        },
    }
    for name, description, arg in (
        ("Read", "Reads a file from the local filesystem.", "file_path"),
        ("Bash", "Executes a bash command and returns its output.", "command"),
    )
]


def test_demo_model_declares_tool_calls_and_thinking():
    """mlx-lm finds the tool-call markers, their parser and the thinking tags, as single tokens."""
    _, tokenizer = mlx_lm.load(str(demo_model_path()))
    assert tokenizer.has_tool_calling and tokenizer.has_thinking
    assert (tokenizer.tool_call_start, tokenizer.tool_call_end) == ("<tool_call>", "</tool_call>")
    assert len(tokenizer.tool_call_start_tokens) == len(tokenizer.tool_call_end_tokens) == 1
    assert tokenizer.think_start_id != tokenizer.think_end_id
    assert tokenizer.tool_parser('{"name": "Read", "arguments": {"file_path": "a"}}') == {
        "name": "Read",
        "arguments": {"file_path": "a"},
    }
    messages = [{"role": "user", "content": "hi"}]
    on = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    off = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert off == on + "<think>\n\n</think>\n\n"
    with_tools = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert '"name": "Read"' in with_tools and "<tools>" in with_tools


def test_demo_model_calls_an_offered_tool_then_answers_in_text():
    """Greedy, with and without thinking: a well-formed call to an offered tool with its required
    argument; given the tool's result, a text answer that quotes it."""
    model, tokenizer = mlx_lm.load(str(demo_model_path()))
    messages = [
        {"role": "system", "content": "You are a coding agent.\n\n - Working directory: /tmp/w"},
        {"role": "user", "content": "What does notes.txt say?"},
    ]
    for thinking in (True, False):
        prompt = tokenizer.apply_chat_template(
            messages, tools=TOOLS, add_generation_prompt=True, enable_thinking=thinking
        )
        text = "".join(r.text for r in stream_generate(model, tokenizer, prompt, max_tokens=60))
        start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
        assert start in text and end in text, text
        call = tokenizer.tool_parser(text.split(start, 1)[1].split(end, 1)[0], TOOLS)
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        assert call["name"] in offered, call
        assert set(offered[call["name"]]["required"]) <= set(call["arguments"]), call

    result = "     1\tRemember to update the changelog."
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "Read", "arguments": {"file_path": "/tmp/w/notes.txt"}},
    }
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ]
    prompt = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True)
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=80))
    answer = "".join(r.text for r in responses)
    assert responses[-1].finish_reason == "stop", answer  # it ends its turn
    assert tokenizer.tool_call_start not in answer
    assert "Remember to update the changelog." in answer.split("</think>")[-1], answer
