"""`mlx.launch --hostfile hosts.json -- moe serve MODEL --distributed` on 2-3 "hosts" (network
namespaces made here, 10.99.0.x): rank 0 answers the official clients with the text one process
gives; /health and /metrics show every rank; a rank that falls off the network, is killed or
never starts turns into a clear API error in bounded time, and SIGTERM to rank 0 stops every
rank. Every launch has a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

KEY = "sekret"
URL = "http://10.99.0.1:8000"
RANK_TIMEOUT = 5.0  # seconds of silence before a ready host counts as gone
LAUNCH_S = 300  # every launch is killed by then at the latest
READY_S = 240  # imports and loading on a busy 2-core machine
MESSAGES = [{"role": "user", "content": "hello how are you"}]
LONG = 400  # tokens of a long answer (this checkpoint's greedy answer has no end token in them)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from moe_testing import CheckpointSpec, build_checkpoint

    return build_checkpoint(
        CheckpointSpec("qwen3_moe", num_layers=4), tmp_path_factory.mktemp("split")
    )


def serve(hosts, model, *options: str, absent=()):
    argv = [sys.executable, "-m", "moe_cli.main", "serve", str(model), "--distributed",
            "--host", "10.99.0.1", "--port", "8000", "--api-key", KEY, "--capacity", "6",
            "--rank-timeout", str(RANK_TIMEOUT), *options]  # fmt: skip
    return hosts.launch(argv, timeout=LAUNCH_S, absent=absent)


def get(path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        URL + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if path != "/metrics" else {"text": text}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_health(hosts, launch, ready: bool) -> dict:
    """/health once the server answers (and, with `ready`, once every rank is ready)."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        assert launch.process.poll() is None, launch.output()
        try:
            status, body = hosts.call(0, lambda: get("/health"))
            if status == 200 or not ready:
                return body
        except OSError:
            pass  # not listening yet
        time.sleep(1)
    pytest.fail(f"no healthy server after {READY_S} s: {launch.output()}")


def rank_pids(hosts, rank: int) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", hosts.names[rank]], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stop_rank_0(hosts) -> None:
    """SIGTERM to the rank 0 server process (not to the launcher)."""
    (pid,) = [p for p in rank_pids(hosts, 0) if b"serve" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(pid, signal.SIGTERM)


def openai_client():
    from openai import OpenAI

    return OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)


def stream_until_fault(fault) -> tuple[str, float]:
    """Stream a long answer; after its first piece, `fault()`; return the error the client got
    and the seconds from the fault to it."""
    import openai

    stream = openai_client().chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=LONG, temperature=0, stream=True
    )
    faulted = None
    try:
        for _ in stream:
            if faulted is None:
                fault()
                faulted = time.monotonic()
    except openai.APIError as e:
        return str(e), time.monotonic() - faulted
    pytest.fail("the stream ended without an error")


def test_serves_the_split_model_exactly_and_stops_on_sigterm(moe_hosts, model):
    from anthropic import Anthropic

    from moe_runtime import Session

    with Session(model, capacity=6, warm_start=False) as one:
        want = one.generate(MESSAGES, max_tokens=12)
    hosts = moe_hosts(2)
    launch = serve(hosts, model, "--split", "1,3")  # rank 0 runs the last layer
    health = wait_health(hosts, launch, ready=True)
    assert [r["state"] for r in health["ranks"]] == ["ready", "ready"]
    assert [r["layers"] for r in health["ranks"]] == [[3, 4], [0, 3]]

    def ask() -> tuple[str, str, str]:
        client = openai_client()
        plain = client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=12, temperature=0
        )
        pieces = client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=12, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        anthropic = Anthropic(base_url=URL, api_key=KEY, max_retries=0).messages.create(
            model="m", messages=MESSAGES, max_tokens=12
        )  # greedy: the server's default
        return plain.choices[0].message.content, streamed, anthropic.content[0].text

    assert hosts.call(0, ask) == (want, want, want)
    status, health = hosts.call(0, lambda: get("/health"))
    assert status == 200
    ranks = health["ranks"]
    for rank in ranks:  # every rank has read its own experts and reports them
        assert rank["bytes_read"] > 0 and 0 < rank["hit_rate"] < 1
        assert rank["process_memory"] > 0
        assert rank["generated_tokens"] == ranks[0]["generated_tokens"] > 0
    metrics = hosts.call(0, lambda: get("/metrics"))[1]["text"]
    for rank in (0, 1):
        assert f'moe_rank_up{{rank="{rank}",address="10.99.0.{rank + 1}"}} 1' in metrics
        assert f'moe_rank_expert_hit_rate{{rank="{rank}"' in metrics

    stop_rank_0(hosts)
    assert launch.wait(timeout=60) == 0
    log = launch.output()
    assert "exited with code" not in log and "was killed" not in log, log  # every rank exited 0
    assert "stopped" in log


def test_a_host_off_the_network_is_an_api_error_and_named_on_health(moe_hosts, model):
    hosts = moe_hosts(3)
    launch = serve(hosts, model)
    wait_health(hosts, launch, ready=True)
    message, seconds = hosts.call(0, lambda: stream_until_fault(lambda: hosts.cut(2)))
    assert "rank 2 (10.99.0.3)" in message
    assert seconds < RANK_TIMEOUT + 10
    status, health = hosts.call(0, lambda: get("/health"))
    assert status == 503 and health["status"] == "degraded"
    assert [r["state"] for r in health["ranks"]][2] == "gone"
    assert "rank 2 (10.99.0.3) is gone" in health["reason"]
    # A new request is refused at once, saying why.
    tic = time.monotonic()
    status, body = hosts.call(
        0, lambda: get("/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    )
    assert status == 503 and "rank 2 (10.99.0.3) is gone" in body["error"]["message"]
    assert time.monotonic() - tic < 5
    stop_rank_0(hosts)  # rank 0 stops although the group cannot; the others follow
    launch.wait(timeout=60)


def test_a_killed_host_is_an_api_error_at_once(moe_hosts, model):
    hosts = moe_hosts(2)
    launch = serve(hosts, model)
    wait_health(hosts, launch, ready=True)

    def kill_rank_1() -> None:
        for pid in rank_pids(hosts, 1):
            os.kill(pid, signal.SIGKILL)

    message, seconds = hosts.call(0, lambda: stream_until_fault(kill_rank_1))
    assert "rank 1 (10.99.0.2)" in message
    assert seconds < 5
    launch.wait(timeout=60)  # mlx.launch ends the launch when a rank dies


def test_a_host_that_never_starts_is_named_and_refused(moe_hosts, model):
    hosts = moe_hosts(3)
    launch = serve(hosts, model, absent=[2])
    deadline = time.monotonic() + READY_S
    while True:  # rank 1 joins rank 0's control channel; rank 2 never does
        health = wait_health(hosts, launch, ready=False)
        if health["ranks"][1]["state"] != "waiting" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health["status"] == "starting"
    assert [r["state"] for r in health["ranks"]][2] == "waiting"
    assert "rank 2 (10.99.0.3) has not joined" in health["reason"]
    status, body = hosts.call(
        0, lambda: get("/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    )
    assert status == 503 and "rank 2 (10.99.0.3) has not joined" in body["error"]["message"]
    stop_rank_0(hosts)
    # Ranks 0 and 1 end; mlx.launch itself waits on the host that never started.
    deadline = time.monotonic() + 60
    while rank_pids(hosts, 0) + rank_pids(hosts, 1):
        assert time.monotonic() < deadline, launch.output()
        time.sleep(0.5)
    assert "exited with code" not in launch.output(), launch.output()


def test_distributed_outside_a_launch_is_one_line(checkpoint, monkeypatch):
    from typer.testing import CliRunner

    from moe_cli.main import app

    monkeypatch.delenv("MLX_RANK", raising=False)
    result = CliRunner().invoke(app, ["serve", str(checkpoint), "--distributed"])
    assert result.exit_code == 1
    assert "started by mlx.launch" in result.output
    assert "Traceback" not in result.output
