"""`moe serve`: a real server process answers the official OpenAI client and exits 0 on SIGTERM;
mistakes about the address are caught before the model loads."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moe(*args) -> list[str]:
    return [sys.executable, "-m", "moe_cli.main", *map(str, args)]


@pytest.fixture(scope="module")
def server(checkpoint):
    port = free_port()
    proc = subprocess.Popen(
        moe("serve", checkpoint, "--port", port, "--capacity", "4", "--api-key", "sekret"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moe serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moe serve did not listen within 120 s")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.communicate()  # closes the pipes: left to the collector they warn in a later test


def test_answers_the_openai_client_and_stops_on_sigterm(server, checkpoint):
    from openai import OpenAI

    proc, port = server
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekret")
    reply = client.chat.completions.create(
        model=checkpoint.name, messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 5

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}/v1" in stderr
    assert f"live page: http://127.0.0.1:{port}/" in stderr
    assert "MB/s reading experts" in stderr  # the disk the page compares reads with
    assert "4 of " in stderr  # capacity per layer
    assert "mode: exact" in stderr
    assert "Traceback" not in stderr


def one_line_failure(*args) -> str:
    out = subprocess.run(moe("serve", *args), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    return lines[0]


def test_port_in_use(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(checkpoint, "--port", port)
    assert str(port) in line


def test_exposed_address_needs_an_api_key(checkpoint):
    assert "API key" in one_line_failure(checkpoint, "--host", "0.0.0.0", "--port", free_port())


def test_memory_too_small(checkpoint):
    assert "too small" in one_line_failure(checkpoint, "--memory", "1MB", "--port", free_port())


def test_prompt_cache_size_must_be_a_size(checkpoint):
    line = one_line_failure(checkpoint, "--prompt-cache-size", "lots", "--port", free_port())
    assert "not a memory size" in line and "lots" in line
