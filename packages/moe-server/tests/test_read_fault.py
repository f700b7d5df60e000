"""A shard cut short while the server runs: requests that need it fail with the API's error (the
server keeps serving), and once the file is whole again the answers are the unmodified model's,
token for token, as a fresh server's would be."""

from __future__ import annotations

import json
import math
import shutil

import httpx
import mlx.core as mx
import mlx_lm
import pytest

from moe_runtime import Session

FIRST = [{"role": "user", "content": "Name three colours."}]
CAPACITY = 2  # of 8 experts per layer: almost every token reads an expert


def _expert_shard(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / next(f for k, f in index["weight_map"].items() if "switch_mlp" in k)


@pytest.fixture(scope="module")
def served(serve_app, model_path, tmp_path_factory):
    copy = shutil.copytree(model_path, tmp_path_factory.mktemp("fault") / "model")
    with Session(copy, capacity=CAPACITY, cache_dir=tmp_path_factory.mktemp("cache")) as session:
        server = serve_app(session)
        yield session, server, _expert_shard(copy)
        server.stop()


def _chat(client, messages, *, max_tokens=8, stream=False):
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "logprobs": True}
    return client.post("/v1/chat/completions", json={**body, "stream": stream})


def _assert_is_the_models(reply, session, reference, messages, max_tokens=8):
    """The answer's tokens and log probabilities are the unmodified model's, one by one."""
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["logprobs"]["content"]
    model, tokenizer = reference
    ids = session.encode_prompt(messages)
    want = list(mlx_lm.stream_generate(model, tokenizer, mx.array(ids), max_tokens=max_tokens))
    assert [c["token"] for c in content] == [tokenizer.decode([r.token]) for r in want]
    for entry, r in zip(content, want, strict=True):
        assert math.isclose(entry["logprob"], r.logprobs[r.token].item(), abs_tol=1e-4)


def test_requests_fail_while_the_shard_is_cut_then_answers_are_exact(served, reference):
    session, server, shard = served
    client = httpx.Client(base_url=server.url, timeout=120)
    first = _chat(client, FIRST)
    _assert_is_the_models(first, session, reference, FIRST)
    # The next turn extends the conversation the prompt cache holds: a failure part way
    # through its prefill must not leave a half-fed cache behind for the retry.
    answer = first.json()["choices"][0]["message"]["content"]
    turn = [*FIRST, {"role": "assistant", "content": answer}, {"role": "user", "content": "More?"}]
    other = [{"role": "user", "content": "Count from one to twenty in words, slowly."}]
    original = shard.read_bytes()
    with open(shard, "r+b") as f:
        f.truncate(len(original) // 2)
    try:
        failures = session.stats()["session"]
        for messages in (turn, other):
            reply = _chat(client, messages)
            assert reply.status_code == 500, reply.text
            error = reply.json()["error"]
            assert error["type"] == "server_error" and "truncated" in error["message"]
        # A stream fails with an error event, in the API's shape, then ends.
        with client.stream("POST", "/v1/chat/completions", json={
            "model": "m", "messages": other, "max_tokens": 8, "stream": True
        }) as response:  # fmt: skip
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["type"] == "server_error"
        assert session.stats()["session"]["requests"] == failures["requests"]
        assert httpx.get(server.url + "/health").status_code == 200  # still serving
    finally:
        with open(shard, "r+b") as f:
            f.write(original)
    for messages in (turn, other, FIRST):
        _assert_is_the_models(_chat(client, messages), session, reference, messages)
