"""The shipped demo model as an agent: are its tool calls well formed, and does it answer from a
tool's result? Sampled, and parsed the way a server parses them.

    uv run python benchmarks/demo_agent.py [--conversations 40] [--claude-request REQUEST.json]

Conversations come from training/agent_data.py's generator with this project's own source as the
files (the model never saw it) and a seed of their own; those with a prompt over `--max-prompt`
tokens are left out (the long prompt is the Claude Code request's). For each:
- the prompt up to its first assistant turn, rendered by the shipped tokenizer's chat template
  with thinking on (mlx-lm's default); the model writes up to 160 tokens, greedy and sampled
  (temperature 0.7, top-p 0.95); the text between `tool_call_start` and `tool_call_end` goes to the
  tokenizer's `tool_parser` (mlx-lm's json_tools, as `moe serve` and `mlx_lm.server` use it).
  Counted: turns with a call; calls that parse; that name an offered tool; that carry its required
  arguments; that equal the reference call (name and arguments);
- the prompt up to the reference's final answer (its calls and the tools' results before it): the
  greedy answer, counted when it is text with no call, when it ends the turn, and when it quotes the
  result line the reference answer quotes.
`--claude-request` (repeatable): an Anthropic request as Claude Code sends it (a body, or a recorded
{"body": ...}, as in packages/moe-server/tests/fixtures/claude_code/), converted by moe-server's
own conversion; its prompt's tokens, the time to the greedy answer on this machine (prefill
included), what the model wrote and the calls in it. A request after the first starts from the
previous one's cache over the tokens they share (`cached_tokens`), as `moe serve`'s prefix cache
would: the recorded follow-up adds the call and its result to the first request.
Writes benchmarks/results/demo_agent.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import stream_generate
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler

from moe_runtime import demo_model_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
import agent_data  # noqa: E402
import data  # noqa: E402

SEED = 1234
SAMPLERS = {"greedy": make_sampler(0.0), "sampled": make_sampler(0.7, top_p=0.95)}


def generate(
    model, tokenizer, prompt: list[int], sampler, max_tokens: int, cache=None
) -> tuple[str, str, int]:
    """Text, finish reason and prompt tokens, from a fresh cache, or from `cache` holding the
    prompt's first tokens (the rest is fed)."""
    cached = 0 if cache is None else cache[0].offset
    cache = make_prompt_cache(model) if cache is None else cache
    responses = list(
        stream_generate(
            model,
            tokenizer,
            prompt[cached:],
            max_tokens=max_tokens,
            sampler=sampler,
            prompt_cache=cache,
        )
    )
    mx.clear_cache()
    return "".join(r.text for r in responses), responses[-1].finish_reason, len(prompt)


def calls_in(tokenizer, text: str, tools: list[dict]) -> list[dict | None]:
    """Each complete call in `text`, parsed by the tokenizer's parser; None where it fails."""
    start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
    out = []
    for piece in text.split(start)[1:]:
        if end not in piece:
            out.append(None)
            continue
        try:
            out.append(tokenizer.tool_parser(piece.split(end, 1)[0], tools))
        except Exception:  # any parser error is a malformed call
            out.append(None)
    return out


def score_call(call: dict | None, tools: list[dict], reference: dict) -> dict:
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    parsed = isinstance(call, dict) and isinstance(call.get("arguments"), dict)
    named = parsed and call.get("name") in offered
    required = named and set(offered[call["name"]].get("required", [])) <= set(call["arguments"])
    exact = (
        named and call["name"] == reference["name"] and call["arguments"] == reference["arguments"]
    )
    return {"parsed": parsed, "offered": named, "required": required, "exact": exact}


def quoted_line(messages: list[dict]) -> str | None:
    """A result line (15+ characters) the reference's final answer quotes, if any."""
    answer = messages[-1]["content"]
    for message in messages:
        if message["role"] == "tool":
            for line in message["content"].splitlines():
                text = line.split("\t", 1)[-1].strip()
                if len(text) >= 15 and text in answer:
                    return text
    return None


def conversations(tokenizer, n: int, max_prompt: int):
    texts = [
        t
        for t in (p.read_text() for p in sorted(ROOT.glob("packages/*/src/**/*.py")))
        if not any(tag in t for tag in data.SPECIAL_TOKENS)
    ]
    stream = agent_data.tasks(len(texts), SEED)
    made = skipped = 0
    while made < n:
        seed, indices = next(stream)
        messages, tools = agent_data.conversation(random.Random(seed), [texts[i] for i in indices])
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = tokenizer.apply_chat_template(
            messages[:first], tools=tools, add_generation_prompt=True
        )
        if len(prompt) > max_prompt:
            skipped += 1
            continue
        made += 1
        yield messages, tools, first, prompt
    print(f"left out {skipped} conversations with prompts over {max_prompt} tokens", flush=True)


def run_conversations(model, tokenizer, n: int, max_prompt: int) -> dict:
    rows = []
    for messages, tools, first, prompt in conversations(tokenizer, n, max_prompt):
        reference = messages[first].get("tool_calls")
        row = {"prompt_tokens": len(prompt), "reference_calls": bool(reference)}
        for name, sampler in SAMPLERS.items():
            text, finish, _ = generate(model, tokenizer, prompt, sampler, 160)
            calls = calls_in(tokenizer, text, tools)
            ref = reference[0]["function"] if reference else {"name": None, "arguments": None}
            row[name] = {
                "text": text,
                "finish": finish,
                "calls": [score_call(c, tools, ref) for c in calls],
            }
        last = len(messages) - 1
        answer_prompt = tokenizer.apply_chat_template(
            messages[:last], tools=tools, add_generation_prompt=True
        )
        text, finish, _ = generate(model, tokenizer, answer_prompt, SAMPLERS["greedy"], 120)
        quote = quoted_line(messages)
        visible = text.split(tokenizer.think_end)[-1]
        row["answer"] = {
            "text": text,
            "finish": finish,
            "no_call": tokenizer.tool_call_start not in text,
            "quote": quote,
            "quoted": None if quote is None else quote in visible,
        }
        rows.append(row)
        print(
            json.dumps({k: row[k] for k in ("prompt_tokens",)}),
            [c for c in row["greedy"]["calls"]],
            row["answer"]["quoted"],
            flush=True,
        )
    return {"rows": rows, "summary": summarize(rows)}


def share(values: list[bool]) -> dict:
    return {"n": len(values), "share": round(sum(values) / len(values), 4) if values else None}


def summarize(rows: list[dict]) -> dict:
    out = {}
    with_reference = [r for r in rows if r["reference_calls"]]
    for name in SAMPLERS:
        calls = [c for r in rows for c in r[name]["calls"]]
        out[name] = {
            "turns_with_a_call": share([bool(r[name]["calls"]) for r in with_reference]),
            "calls_parsed": share([c["parsed"] for c in calls]),
            "calls_naming_an_offered_tool": share([c["offered"] for c in calls]),
            "calls_with_required_arguments": share([c["required"] for c in calls]),
            "first_call_equal_to_reference": share(
                [bool(r[name]["calls"]) and r[name]["calls"][0]["exact"] for r in with_reference]
            ),
        }
    answers = [r["answer"] for r in rows]
    out["answer_after_results"] = {
        "text_without_a_call": share([a["no_call"] for a in answers]),
        "ends_its_turn": share([a["finish"] == "stop" for a in answers]),
        "quotes_the_result_line": share([a["quoted"] for a in answers if a["quoted"] is not None]),
    }
    return out


def reuse(model, previous: tuple[list[int], list] | None, prompt: list[int]):
    """The previous request's cache trimmed to the prefix it shares with `prompt` (at least one
    token left to feed), or None: a follow-up request prefills only what it adds, as `moe serve`'s
    prefix cache does."""
    if previous is None:
        return None
    tokens, cache = previous
    common = 0
    for a, b in zip(tokens, prompt, strict=False):
        if a != b:
            break
        common += 1
    common = min(common, len(prompt) - 1)
    if common == 0 or not can_trim_prompt_cache(cache):
        return None
    trim_prompt_cache(cache, cache[0].offset - common)
    return cache


def claude_request(model, tokenizer, path: Path, previous=None) -> tuple[dict, tuple]:
    """One request as Claude Code sends it: prompt size, time to the answer, what the model wrote;
    and (prompt, cache) for the next request to start from."""
    from moe_server._anthropic import convert_messages

    raw = json.loads(path.read_text())
    body = raw.get("body", raw)
    messages = convert_messages(body)
    tools = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description", ""),
                "parameters": t["input_schema"],
            },
        }
        for t in body.get("tools", [])
    ]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True)
    cache = reuse(model, previous, prompt)
    cached = 0 if cache is None else cache[0].offset
    cache = make_prompt_cache(model) if cache is None else cache
    wall, cpu = time.perf_counter(), time.process_time()
    text, finish, _ = generate(model, tokenizer, prompt, SAMPLERS["greedy"], 160, cache)
    calls = calls_in(tokenizer, text, tools)
    return {
        "request": {
            "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "tools": len(tools),
            "messages": len(messages),
            "last": messages[-1]["role"],
        },
        "prompt_tokens": len(prompt),
        "cached_tokens": cached,
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "text": text,
        "finish": finish,
        "calls": calls,
        "calls_scored": [score_call(c, tools, {"name": None, "arguments": None}) for c in calls],
    }, (prompt, cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--max-prompt", type=int, default=6000)
    parser.add_argument("--claude-request", type=Path, action="append", default=[])
    args = parser.parse_args()
    model, tokenizer = load(str(demo_model_path()))
    start = time.perf_counter()
    result = {
        "benchmark": "demo_agent",
        "model": "demo (moe_runtime.demo_model_path())",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, MLX CPU backend",
        "parser": f"{tokenizer.tool_parser.__module__}.{tokenizer.tool_parser.__name__}",
        "conversations": run_conversations(model, tokenizer, args.conversations, args.max_prompt),
    }
    result["claude_requests"], previous = [], None
    for path in args.claude_request:
        row, previous = claude_request(model, tokenizer, path.resolve(), previous)
        result["claude_requests"].append(row)
        print(json.dumps({k: row[k] for k in ("prompt_tokens", "cached_tokens", "wall_s")}))
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = ROOT / "benchmarks" / "results" / "demo_agent.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["conversations"]["summary"], indent=2))


if __name__ == "__main__":
    main()
