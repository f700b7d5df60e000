"""Claude Code's own requests: recorded from a real run (benchmarks/claude_code.py record) and
replayed, and, where Claude Code is installed, a live `claude -p` session with a tool call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from _providers import ScriptedProvider

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"
ANSWER = "The notes say the cache keeps 4 slots."


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _events(text: str) -> list[tuple[str, dict]]:
    lines = text.splitlines()
    return [
        (line[7:], json.loads(lines[i + 1][6:]))
        for i, line in enumerate(lines)
        if line.startswith("event: ")
    ]


@pytest.fixture(scope="module")
def agent_server(serve_app, provider):
    call = {"name": "Read", "arguments": {"file_path": "/home/user/project/notes.txt"}}
    scripted = ScriptedProvider(
        provider, [f"<tool_call>\n{json.dumps(call)}\n</tool_call>", ANSWER]
    )
    # Claude Code's prompt, tools included, is tens of thousands of tokens.
    server = serve_app(scripted, max_body_bytes=4 * 1024 * 1024)
    return scripted, server


@pytest.mark.parametrize("name", ["first_request", "tool_result_request"])
def test_recorded_requests_are_accepted(agent_server, name):
    scripted, server = agent_server
    recorded = _fixture(name)
    body = recorded["body"]
    assert body["thinking"] == {"type": "adaptive"} and body["max_tokens"] == 32000
    assert len(body["tools"]) >= 20 and any(m["role"] == "system" for m in body["messages"])
    scripted.calls = 0 if name == "first_request" else 1
    response = httpx.post(
        server.url + recorded["path"], json=body, headers=recorded["headers"], timeout=120
    )
    assert response.status_code == 200, response.text
    events = _events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    delta = next(data for kind, data in events if kind == "message_delta")["delta"]
    if name == "first_request":
        assert delta["stop_reason"] == "tool_use"
        block = next(d for k, d in events if k == "content_block_start")["content_block"]
        assert block["type"] == "tool_use" and block["name"] == "Read"
    else:
        assert delta["stop_reason"] == "end_turn"
        # The tool result reached the template as a tool message after the assistant's call.
        prompt = scripted.prompts[-1]
        assert prompt[-2]["tool_calls"][0]["function"]["name"] == "Read"
        assert prompt[-1]["role"] == "tool" and "4 slots per layer" in prompt[-1]["content"]
    # The system-role message stays a system message where Claude Code put it.
    prompt = scripted.prompts[-1]
    assert [m["role"] for m in prompt[:3]] == ["system", "user", "system"]
    # count_tokens counts what /v1/messages ran: system, messages, tools, thinking.
    counted = httpx.post(
        server.url + "/v1/messages/count_tokens?beta=true",
        json={k: v for k, v in body.items() if k not in ("max_tokens", "stream")},
        headers=recorded["headers"],
        timeout=120,
    )
    assert counted.status_code == 200, counted.text
    started = events[0][1]["message"]["usage"]["input_tokens"]
    assert counted.json()["input_tokens"] == started > 10_000


def _claude() -> str | None:
    return os.environ.get("MOE_CLAUDE_CODE") or shutil.which("claude")


@pytest.mark.skipif(
    _claude() is None,
    reason="Claude Code is not installed (npm install @anthropic-ai/claude-code, or set "
    "MOE_CLAUDE_CODE to its binary)",
)
def test_live_claude_code_runs_a_tool_and_answers(serve_app, provider, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    notes = project / "notes.txt"
    notes.write_text("The expert cache keeps 4 slots per layer.\n")
    call = {"name": "Read", "arguments": {"file_path": str(notes)}}
    scripted = ScriptedProvider(
        provider, [f"<tool_call>\n{json.dumps(call)}\n</tool_call>", ANSWER]
    )
    server = serve_app(scripted, max_body_bytes=4 * 1024 * 1024)
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "sk-dummy",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [_claude(), "-p", "What does notes.txt say?", "--allowedTools", "Read"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert ANSWER in done.stdout
    # Claude Code executed the Read call and sent its result back.
    assert scripted.calls >= 2
    tool_messages = [m for m in scripted.prompts[-1] if m["role"] == "tool"]
    assert tool_messages and "4 slots per layer" in tool_messages[-1]["content"]
