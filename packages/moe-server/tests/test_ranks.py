"""A provider split across hosts (it has `health()`): while a rank is gone or loading, requests
are refused at once with a 503 that says why, in each API's error shape; /health and /metrics
show every rank."""

from __future__ import annotations

import httpx
import pytest
from _providers import ScriptedProvider

RANKS = [
    {"rank": 0, "address": "10.99.0.1", "state": "ready", "reason": None, "layers": [2, 4],
     "process_memory": 2_000_000, "peak_memory": 1_500_000, "hit_rate": 0.5, "bytes_read": 100},
    {"rank": 1, "address": "10.99.0.2", "state": "ready", "reason": None, "layers": [0, 2],
     "process_memory": 3_000_000, "peak_memory": 2_500_000, "hit_rate": 0.25, "bytes_read": 300},
]  # fmt: skip


class SplitProvider(ScriptedProvider):
    def __init__(self, session):
        super().__init__(session, ["all ranks answer"])
        self.state = {"status": "ok", "reason": None, "ranks": RANKS}

    def health(self) -> dict:
        return self.state


@pytest.fixture
def split(serve_app, provider):
    provider = SplitProvider(provider)
    return provider, serve_app(provider)


def test_healthy_ranks_serve_and_are_reported(split):
    _, server = split
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    )
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "all ranks answer"
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200
    assert [r["layers"] for r in health.json()["ranks"]] == [[2, 4], [0, 2]]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'moe_rank_up{rank="1",address="10.99.0.2"} 1' in metrics
    assert 'moe_rank_expert_hit_rate{rank="1",address="10.99.0.2"} 0.25' in metrics
    assert 'moe_rank_process_memory_bytes{rank="0",address="10.99.0.1"} 2000000' in metrics
    assert 'moe_rank_expert_bytes_read_total{rank="1",address="10.99.0.2"} 300' in metrics


def test_a_gone_rank_is_a_503_with_the_reason_in_each_api(split):
    provider, server = split
    reason = "rank 1 (10.99.0.2) is gone: its connection closed"
    gone = [RANKS[0], {**RANKS[1], "state": "gone", "reason": "its connection closed"}]
    provider.state = {"status": "degraded", "reason": reason, "ranks": gone}
    calls = provider.calls
    messages = [{"role": "user", "content": "hi"}]
    openai = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "m", "messages": messages}
    )
    assert openai.status_code == 503
    assert reason in openai.json()["error"]["message"]
    anthropic = httpx.post(
        server.url + "/v1/messages", json={"model": "m", "messages": messages, "max_tokens": 8}
    )
    assert anthropic.status_code == 503
    assert anthropic.json()["type"] == "error" and reason in anthropic.json()["error"]["message"]
    count = httpx.post(
        server.url + "/v1/messages/count_tokens", json={"model": "m", "messages": messages}
    )
    assert count.status_code == 503
    assert provider.calls == calls  # nothing reached the model
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["reason"] == reason
    assert 'moe_rank_up{rank="1",address="10.99.0.2"} 0' in httpx.get(server.url + "/metrics").text
