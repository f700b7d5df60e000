"""`moe serve` stopped by SIGTERM while streaming clients are connected: the running request
finishes, the queued one gets the API's error event at once, new connections are refused, the
resident experts are saved and the process exits 0. Also `--max-context` and `--queue`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

CHAT = [{"role": "user", "content": "hello"}]


def never_stop(checkpoint) -> dict:
    """A logit_bias that keeps the random model from ending its answer early (it would, after
    a few dozen tokens, and a request meant to be running would be over)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    ends = ("<|im_end|>", "<|endoftext|>")
    return {str(tokenizer.token_to_id(t)): -100 for t in ends}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stopped(proc) -> str:
    """Wait for `moe serve` to exit; its output."""
    proc.wait(timeout=60)
    return proc.log.read_text()


@pytest.fixture
def serve(checkpoint, tmp_path):
    """Start `moe serve` with its own cache directory; yields (process, base url, cache)."""
    procs = []

    def start(*options):
        port = free_port()
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        args = [sys.executable, "-m", "moe_cli.main", "serve", str(checkpoint), "--port", str(port)]
        # The server's output goes to a file: a pipe nobody reads while the test runs would
        # block the server once its buffer is full.
        log = tmp_path / f"serve-{len(procs)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*args, "--capacity", "4", "--disk-mbps", "1000", *map(str, options)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return proc, url, tmp_path / "cache"
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail("moe serve did not answer within 120 s")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_finishes_the_running_stream_fails_the_queued_one_and_exits_0(serve, checkpoint):
    from openai import OpenAI

    proc, url, cache = serve("--grace", 60, "--batch", 1)  # the second request waits
    client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    running = iter(
        client.chat.completions.create(
            model="m",
            messages=CHAT,
            max_tokens=300,
            stream=True,
            logit_bias=never_stop(checkpoint),
        )
    )
    next(running), next(running)  # generating
    queued: dict = {}

    def anthropic_stream():
        body = {"model": "m", "max_tokens": 20, "messages": CHAT, "stream": True}
        with httpx.stream("POST", url + "/v1/messages", json=body, timeout=60) as response:
            queued["text"] = response.read().decode()
            queued["at"] = time.monotonic()

    waiter = threading.Thread(target=anthropic_stream)
    waiter.start()
    deadline = time.monotonic() + 30
    while httpx.get(url + "/health").json()["queue_depth"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    waiter.join(30)
    # The queued request: its API's error event at once, not a wait for the running one.
    assert queued["at"] - signalled < 5
    last = [f for f in queued["text"].split("\n\n") if f.strip()][-1]
    assert last.startswith("event: error\n")
    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "overloaded_error"
    # New connections are refused while the running request finishes.
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
    chunks = list(running)
    assert chunks[-1].choices[0].finish_reason == "length"  # all 300 tokens: finished, not cut
    stderr = stopped(proc)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped" in stderr
    [state] = (cache / "moe" / "warm").glob("*.json")  # the resident experts, saved on the way out
    assert state.stat().st_mtime > signalled


def test_max_context_and_queue_options(serve, checkpoint):
    proc, url, _ = serve("--max-context", 2000, "--queue", 0, "--batch", 1)
    [model] = httpx.get(url + "/v1/models").json()["data"]
    assert model["context_length"] == 2000
    long = [{"role": "user", "content": "word " * 2500}]
    response = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": long})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # --queue 0 --batch 1: while one request runs, another is refused, told when to come back.
    body = {
        "model": "m",
        "messages": CHAT,
        # Long enough to be running still when the next request comes, however fast the machine
        # (200 tokens of the tiny model could be over before it).
        "max_tokens": 1900,
        "stream": True,
        "logit_bias": never_stop(checkpoint),
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as running:
        # The iterator is kept: one dropped at once closes the connection (httpx), and the
        # server rightly cancels the request of a client that left.
        lines = running.iter_lines()
        seen = [line for line in itertools.islice(lines, 3) if line]  # the role, then a token
        assert len(seen) == 2 and "error" not in seen[1], seen  # generating, not failed
        small = {**body, "stream": False, "max_tokens": 1}
        refused = httpx.post(url + "/v1/chat/completions", json=small, timeout=60)
        assert refused.status_code == 429, (refused.status_code, refused.text)
        assert (
            int(refused.headers["retry-after"]) >= 1 and int(refused.headers["retry-after-ms"]) > 0
        )
    proc.send_signal(signal.SIGTERM)
    stderr = stopped(proc)
    assert proc.returncode == 0 and "context: 2000 tokens (max_context given" in stderr


def test_prompt_caches_outlive_a_restart(serve, checkpoint):
    """Turn 1, SIGTERM, a new `moe serve` on the same prompt-cache directory: turn 2's usage
    says the conversation so far came from the cache (the default directory under the cache
    home); then `--prompt-cache-size 0` keeps nothing on disk."""
    from openai import OpenAI

    def chat(url, messages):
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        return client.chat.completions.create(model="m", messages=messages, max_tokens=6)

    proc, url, cache = serve()
    first = chat(url, CHAT)
    proc.send_signal(signal.SIGTERM)
    stderr = stopped(proc)
    assert proc.returncode == 0, stderr
    assert f"in {cache / 'moe' / 'prompts'}" in stderr  # the announced prompt-cache directory
    assert list((cache / "moe" / "prompts").glob("*/*.safetensors"))

    turn2 = [*CHAT, {"role": "assistant", "content": first.choices[0].message.content}]
    turn2.append({"role": "user", "content": "and then?"})
    proc, url, _ = serve()
    second = chat(url, turn2)
    assert 0 < second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    proc.send_signal(signal.SIGTERM)
    stopped(proc)

    proc, url, _ = serve("--prompt-cache-size", "0", "--prompt-cache-dir", cache / "elsewhere")
    chat(url, CHAT)
    proc.send_signal(signal.SIGTERM)
    stderr = stopped(proc)
    assert proc.returncode == 0 and "in memory" in stderr
    assert not (cache / "elsewhere").exists()
