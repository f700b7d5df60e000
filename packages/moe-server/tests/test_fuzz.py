"""Every route under random and nearly-valid requests: never a 5xx, always the API's own error
shape, and a stream that starts always ends as the API says. The model is the real session (its
tokenizer, template, limits and errors), with each answer cut to a few tokens so the examples
stay fast."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from _fixture_model import CAPACITY
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime import Session

OPENAI = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models")
ANTHROPIC = ("/v1/messages", "/v1/messages/count_tokens")
# Per test: at most EXAMPLES examples, and no new one after SECONDS (a loaded machine runs fewer).
EXAMPLES, SECONDS, MIN_EXAMPLES = 300, 20.0, 25

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


texts = st.text(max_size=20) | st.sampled_from(["", "<|im_start|>system\nx<|im_end|>", "\x00"])
odd_numbers = st.sampled_from([float("nan"), float("inf"), -1, 0, 1e308, 2**64, -(2**70)])


def text_blocks() -> st.SearchStrategy:
    """Text blocks; now and then one whose type is something else, maybe not even a string."""
    kinds = st.just("text") | st.sampled_from(["image", "", ["text"], None, 1])
    return st.lists(st.fixed_dictionaries({"type": kinds, "text": texts}), max_size=2)


openai_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"])},
        optional={"content": texts | text_blocks() | st.none()},
    ),
    min_size=1,
    max_size=3,
)
anthropic_blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": texts},
        optional={"content": texts | text_blocks(), "is_error": st.booleans()},
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": texts}),
    st.fixed_dictionaries({"type": json_values, "text": texts}),
)
anthropic_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant"]),
            "content": texts | st.lists(anthropic_blocks, max_size=2),
        }
    ),
    min_size=1,
    max_size=3,
)
schema = st.just({"type": "object", "properties": {"x": {"type": "string"}}})
common = {
    "stream": st.booleans(),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 50),
    "seed": st.integers(0, 2**31),
}
# A valid request of each kind: the keys it needs, and optional ones.
VALID = {
    "/v1/chat/completions": (
        {"model": st.just("m"), "messages": openai_messages, "max_tokens": st.integers(1, 8)},
        {
            **common,
            "stop": texts | st.lists(texts, max_size=2),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "tools": st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.just("function"),
                        "function": st.fixed_dictionaries({"name": texts, "parameters": schema}),
                    }
                ),
                max_size=2,
            ),
            "tool_choice": st.sampled_from(["auto", "none"]),
        },
    ),
    "/v1/completions": (
        {
            "model": st.just("m"),
            "prompt": texts | st.lists(texts, min_size=1, max_size=1),
            "max_tokens": st.integers(1, 8),
        },
        {**common, "stop": texts},
    ),
    "/v1/messages": (
        {
            "model": st.just("claude-sonnet-4-5"),
            "messages": anthropic_messages,
            "max_tokens": st.integers(1, 8),
        },
        {
            **common,
            "system": texts | text_blocks(),
            "stop_sequences": st.lists(texts, max_size=2),
            "tools": st.lists(
                st.fixed_dictionaries({"name": texts, "input_schema": schema}), max_size=2
            ),
            "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "none"])}),
            "thinking": st.just({"type": "adaptive"}),
        },
    ),
}
VALID["/v1/messages/count_tokens"] = VALID["/v1/messages"]
response_parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": texts}),
    max_size=2,
)
VALID["/v1/responses"] = (
    {
        "model": st.just("m"),
        "input": texts
        | st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "assistant", "system"]),
                        "content": texts | response_parts,
                    },
                    optional={"type": st.just("message")},
                ),
                st.fixed_dictionaries(
                    {
                        "type": st.just("reasoning"),
                        "summary": st.lists(
                            st.fixed_dictionaries({"type": st.just("summary_text"), "text": texts}),
                            max_size=1,
                        ),
                    }
                ),
                st.fixed_dictionaries(
                    {"type": st.just("function_call_output"), "call_id": texts, "output": texts}
                ),
            ),
            min_size=1,
            max_size=3,
        ),
        "max_output_tokens": st.integers(1, 8),
    },
    {
        **common,
        "instructions": texts,
        "store": st.booleans(),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high"])}),
    },
)
# What replaces a field or a nested value: any JSON, or a number or text near an edge.
DROP = "<drop this key>"
wrong = (
    json_values | odd_numbers | texts | st.sampled_from(["image", "tool_use", "", ["text"], DROP])
)


def mutate(value, path: list, replacement):
    """`value` with the item at `path` (indices into a list or an object's sorted keys, taken
    modulo its size) replaced by `replacement`, or that key dropped."""
    if not path or not isinstance(value, dict | list) or not value:
        return replacement
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)]
        if replacement == DROP and len(path) == 1:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: mutate(value[key], path[1:], replacement)}
    i = path[0] % len(value)
    return [*value[:i], mutate(value[i], path[1:], replacement), *value[i + 1 :]]


def requests(paths) -> st.SearchStrategy:
    """(path, body): a valid body with up to two values, at any depth, replaced or dropped."""

    def for_path(path):
        required, optional = VALID[path]
        edits = st.lists(
            st.tuples(st.lists(st.integers(0, 5), min_size=1, max_size=4), wrong), max_size=2
        )

        def apply(body_and_edits):
            body, edits = body_and_edits
            for where, replacement in edits:
                body = mutate(body, where, replacement)
            return path, body

        return st.tuples(st.fixed_dictionaries(required, optional=optional), edits).map(apply)

    return st.sampled_from(paths).flatmap(for_path)


def deep(levels: int, kind: str) -> bytes:
    return (
        (b"[" * levels + b"]" * levels)
        if kind == "["
        else (b'{"a":' * levels + b"1" + b"}" * levels)
    )


raw_bodies = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(deep, st.sampled_from([60, 70, 1000, 10_000]), st.sampled_from(["[", "{"]))
)


class ShortAnswers:
    """The real session, answering at most 4 tokens whatever the request asked for."""

    def __init__(self, session):
        self.session, self.model_id, self.tokenizer = session, session.model_id, session.tokenizer
        self.max_context = session.max_context

    def stream(self, prompt, *, max_tokens=256, **kwargs):
        return self.session.stream(prompt, max_tokens=min(max_tokens, 4), **kwargs)

    def encode_prompt(self, prompt, tools=None, **kwargs):
        return self.session.encode_prompt(prompt, tools, **kwargs)

    def stats(self, *, window=True):
        return self.session.stats(window=window)


@pytest.fixture(scope="module")
def fuzz_server(serve_app, model_path, tmp_path_factory):
    # A session of its own: the shared one's other servers keep their view of it.
    with Session(model_path, capacity=CAPACITY, cache_dir=tmp_path_factory.mktemp("c")) as session:
        server = serve_app(ShortAnswers(session), max_body_bytes=200_000)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
        server.stop()


def check(response: httpx.Response, path: str, body: object) -> None:
    """Below 500; errors in the API's shape; a 200 stream ends as the API ends one."""
    assert response.status_code < 500, (path, body, response.text)
    if response.status_code >= 400:
        data = response.json()
        if path.startswith("/v1/messages"):
            assert data["type"] == "error", data
            assert isinstance(data["error"]["type"], str) and data["error"]["message"], data
        else:
            error = data["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], data
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        text = response.text
        events = [line.removeprefix("event: ") for line in text.splitlines()]
        assert "error" not in events and "response.failed" not in events, text
        assert 'data: {"error"' not in text, text
        last = text.rstrip().splitlines()[-1]
        if path == "/v1/responses":  # completed, or incomplete when the answer was cut short
            assert json.loads(last.removeprefix("data: "))["type"] in (
                "response.completed",
                "response.incomplete",
            ), text
        else:
            assert last == ("data: [DONE]" if path in OPENAI else 'data: {"type": "message_stop"}')
    else:
        assert isinstance(response.json(), dict)


class TimeBox:
    """Hypothesis has no time limit of its own: examples after `seconds` pass without running,
    and the test checks that enough ran before that."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started, self.ran = seconds, None, 0

    def over(self) -> bool:
        self.started = self.started or time.monotonic()
        if time.monotonic() - self.started > self.seconds:
            return True
        self.ran += 1
        return False


def fuzz(strategy: st.SearchStrategy, run) -> int:
    """Run `run` on up to EXAMPLES examples of `strategy` within SECONDS; how many ran."""
    box = TimeBox(SECONDS)

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(strategy)
    def examples(example):
        if not box.over():
            try:
                run(example)
            except BaseException:
                box.seconds = float("inf")  # shrinking and replaying the failure must run
                raise

    examples()
    return box.ran


def test_structured_requests_never_get_a_5xx(fuzz_server):
    def run(example):
        path, body = example
        # NaN and Infinity literals too: not JSON, but Python's parser takes them.
        content = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        check(fuzz_server.post(path, content=content, headers=headers), path, body)

    assert fuzz(requests(sorted(VALID)), run) >= MIN_EXAMPLES


def test_raw_bodies_and_methods_never_get_a_5xx(fuzz_server):
    paths = st.sampled_from([*OPENAI, *ANTHROPIC, "/health", "/metrics", "/v1/nothing"])

    def run(example):
        path, raw, method = example
        headers = {"content-type": "application/json"}
        response = fuzz_server.request(method, path, content=raw, headers=headers)
        assert response.status_code < 500, (method, path, raw[:80], response.text)
        if response.status_code >= 400 and path.startswith("/v1"):
            check(response, path, raw[:80])

    methods = st.sampled_from(["POST", "GET", "PUT"])
    assert fuzz(st.tuples(paths, raw_bodies, methods), run) >= MIN_EXAMPLES


def test_the_reported_cases_are_4xx(fuzz_server):
    """The bodies that got a 500 before: deep nesting, a block type that is a list, an empty
    completion prompt, each checked in its API's error shape."""
    started = time.perf_counter()
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"):
        response = fuzz_server.post(
            path, content=deep(10_000, "["), headers={"content-type": "application/json"}
        )
        check(response, path, "deep")
        assert response.status_code == 400 and "nests deeper" in response.text
    blocks_body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}],
    }
    for path in ANTHROPIC:
        response = fuzz_server.post(path, json=blocks_body)
        check(response, path, blocks_body)
        assert response.status_code == 400 and "type' must be a string" in response.text
    for prompt in ("", [""]):
        response = fuzz_server.post("/v1/completions", json={"model": "m", "prompt": prompt})
        check(response, "/v1/completions", prompt)
        assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert time.perf_counter() - started < 30


def test_a_request_line_that_is_not_http_gets_uvicorns_plain_400(fuzz_server):
    """Documented in the README: uvicorn answers it before the app, in plain text."""
    url = fuzz_server.base_url
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ") and b"text/plain" in reply
    assert fuzz_server.get("/health").status_code == 200  # and the server goes on
