"""Concurrent requests decoded together (`create_app(..., batch=n)`): each client gets the
unmodified model's tokens, as if it ran alone; requests join and leave the batch; a client that
leaves ends only its own request; what cannot batch runs alone; the queue and the drain count
the batch."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import mlx.core as mx
import mlx_lm
import openai
import pytest
from _fixture_model import CAPACITY

from moe_runtime import Session

PROMPTS = [
    "hi",
    "what is your name",
    "write a long poem about the sea and the wind, please",
    "count from one to twenty",
    "tell me a story",
    "what is two plus two",
]


@pytest.fixture(scope="module")
def batched(serve_app, model_path, tmp_path_factory):
    with Session(model_path, capacity=CAPACITY, cache_dir=tmp_path_factory.mktemp("b")) as session:
        server = serve_app(session, batch=4, max_queue=8)
        yield session, server
        server.stop()


def _reference_tokens(reference, text: str, max_tokens: int) -> list[int]:
    model, tokenizer = reference
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True
    )
    out = []
    for r in mlx_lm.stream_generate(model, tokenizer, mx.array(ids), max_tokens=max_tokens):
        if r.finish_reason == "stop" and r.token in tokenizer.eos_token_ids:
            break
        out.append(r.token)
    return out


def _most_running(worker, until: threading.Event) -> list[int]:
    seen = [0]

    def watch():
        while not until.is_set():
            seen[0] = max(seen[0], worker.running)
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_concurrent_clients_get_the_models_tokens(batched, reference):
    _, server = batched
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    limits = [12, 20, 7, 16, 9, 14]
    done = threading.Event()
    most = _most_running(server.app.state.engine.worker, done)

    def ask(i):
        reply = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": PROMPTS[i]}],
            max_tokens=limits[i],
            logprobs=True,
        )
        return reply

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(ask, range(len(PROMPTS))))
    done.set()
    assert most[0] >= 2, "the requests never ran together"
    tokenizer = reference[1]
    for i, reply in enumerate(replies):
        want = _reference_tokens(reference, PROMPTS[i], limits[i])
        assert reply.choices[0].message.content == tokenizer.decode(want), f"request {i}"
        assert reply.usage.completion_tokens == len(want) + (len(want) < limits[i])
        got = [t.token for t in reply.choices[0].logprobs.content]
        assert "".join(got) == reply.choices[0].message.content


def test_a_client_leaving_ends_only_its_request(batched, reference):
    session, server = batched
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    before = session.stats()["session"]["cancelled"]
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": PROMPTS[2]}],
        max_tokens=200,
        stream=True,
        extra_body={"logit_bias": {str(t): -100 for t in reference[1].eos_token_ids}},
    )
    chunks = iter(stream)
    next(chunks), next(chunks)

    def other():
        return client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=16
        )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(other)
        next(chunks)
        stream.close()  # the client leaves in the middle
        reply = future.result(60)
    want = _reference_tokens(reference, PROMPTS[3], 16)
    assert reply.choices[0].message.content == reference[1].decode(want)
    worker = server.app.state.engine.worker
    deadline = time.monotonic() + 10
    while worker.running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert session.stats()["session"]["cancelled"] == before + 1


def test_a_seeded_sampled_request_runs_alone_and_repeats(batched):
    session, server = batched
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    seeded = dict(model="m", max_tokens=12, temperature=0.9, seed=5)

    def ask(i):
        messages = [{"role": "user", "content": PROMPTS[i % 3]}]
        if i % 2:
            return client.chat.completions.create(messages=messages, **seeded)
        return client.chat.completions.create(model="m", messages=messages, max_tokens=12)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    again = client.chat.completions.create(
        messages=[{"role": "user", "content": PROMPTS[1]}], **seeded
    )
    assert replies[1].choices[0].message.content == again.choices[0].message.content
    alone = session.generate(
        [{"role": "user", "content": PROMPTS[1]}], max_tokens=12, temperature=0.9, seed=5
    )
    assert again.choices[0].message.content == alone


def test_the_queue_counts_the_batch(serve_app, model_path, tmp_path_factory):
    with Session(model_path, capacity=CAPACITY, cache_dir=tmp_path_factory.mktemp("q")) as session:
        server = serve_app(session, batch=2, max_queue=0)
        worker = server.app.state.engine.worker
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
        body["logit_bias"] = {str(t): -100 for t in session.tokenizer.eos_token_ids}
        http = httpx.Client(base_url=server.url, timeout=60)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = [pool.submit(http.post, "/v1/chat/completions", json=body) for _ in range(2)]
            deadline = time.monotonic() + 30
            while worker.running < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refused = http.post("/v1/chat/completions", json=body)
            assert refused.status_code == 429 and float(refused.headers["retry-after"]) > 0
            # What SIGTERM does, on the server's loop: both running ones end after the grace.
            loop = next(iter(worker._running.values()))[0].loop
            loop.call_soon_threadsafe(worker.drain, 0.2)
            for future in running:
                assert future.result(30).status_code == 503
        server.stop()
