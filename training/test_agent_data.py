"""The synthetic agent conversations: well-formed calls, the shipped template, determinism.

    uv run pytest training/test_agent_data.py

needs transformers (its chat-template renderer) and mlx-lm (its tool parser and tokenizer), both in
the workspace's environment. The corpus here is this repository's own Python source.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]

import agent_data  # noqa: E402
import data  # noqa: E402

# As data.read_documents does: a file that spells out a special token is no training document.
TEXTS = [
    text
    for text in (p.read_text() for p in sorted(ROOT.glob("packages/*/src/**/*.py")))
    if not any(token in text for token in data.SPECIAL_TOKENS)
]
CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def conversations(n: int, seed: int = 0):
    stream = agent_data.tasks(len(TEXTS), seed)
    for _ in range(n):
        task_seed, indices = next(stream)
        yield agent_data.conversation(random.Random(task_seed), [TEXTS[i] for i in indices])


def test_every_call_parses_and_names_an_offered_tool_with_its_required_arguments():
    from mlx_lm.tool_parsers.json_tools import parse_tool_call

    calls = 0
    for messages, tools in conversations(150):
        text = data.render(messages, tools)
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        after_instructions = text.split("<|im_end|>", 1)[1]  # the system block shows the format
        for body in CALL.findall(after_instructions):
            call = parse_tool_call(body)
            assert call["name"] in offered, call
            assert set(offered[call["name"]].get("required", [])) <= set(call["arguments"]), call
            calls += 1
        assert text.endswith("<|im_end|>\n")
        assert messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    assert calls > 150


def test_a_result_follows_each_call_and_the_working_directory_is_in_the_system_prompt():
    for messages, _ in conversations(60, seed=3):
        for i, message in enumerate(messages):
            for n, call in enumerate(message.get("tool_calls") or []):
                answer = messages[i + 1 + n]
                assert answer["role"] == "tool" and answer["tool_call_id"] == call["id"]
                path = call["function"]["arguments"].get("file_path")
                if path:  # Claude Code's tools take absolute paths, under the working directory
                    cwd = re.search(r"(?:directory|cwd): (/\S+)", messages[0]["content"])
                    assert cwd and path.startswith(cwd.group(1) + "/"), (path, messages[0])


def test_the_shipped_tokenizer_renders_the_training_text_exactly():
    from mlx_lm.tokenizer_utils import load

    from moe_runtime import demo_model_path

    tokenizer = load(demo_model_path())
    assert tokenizer.has_tool_calling and tokenizer.has_thinking
    for messages, tools in conversations(20, seed=5):
        assert tokenizer.apply_chat_template(messages, tools=tools, tokenize=False) == (
            data.render(messages, tools)
        )


def test_tags_are_single_tokens_that_decoding_keeps():
    from tokenizers import Tokenizer

    from moe_runtime import demo_model_path

    tokenizer = Tokenizer.from_file(str(demo_model_path() / "tokenizer.json"))
    for tag in data.SPECIAL_TOKENS:
        assert tokenizer.token_to_id(tag) is not None, tag
    text = "<think>\nok\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("seed", [0, 1])
def test_generation_is_deterministic(seed):
    first = agent_data.agent_texts(TEXTS, 60_000, seed, workers=2)
    assert first == agent_data.agent_texts(TEXTS, 60_000, seed, workers=1)
    assert sum(map(len, first)) >= 60_000
    assert all(json.dumps(t) for t in first)
