"""The session's one context limit, and a prefill that stops between chunks when cancelled."""

from __future__ import annotations

import json

import pytest

from moe_runtime import Session
from moe_runtime._kv import KV_SHARE, plan_context

MESSAGES = [{"role": "user", "content": "what is your name"}]


@pytest.fixture(scope="module")
def session(checkpoint, tmp_path_factory):
    with Session(
        checkpoint("qwen3_moe"), capacity=6, cache_dir=tmp_path_factory.mktemp("warm")
    ) as s:
        yield s


def test_context_is_the_models_positions_unless_lowered(checkpoint, session, tmp_path):
    # The fixture's config says 2048 positions (the old default of 4096 went past them).
    assert session.max_context == session.kv.max_context == 2048
    assert "2048 positions" in session.stats()["kv"]["reason"]
    with pytest.raises(ValueError, match="max_context"):
        session.generate([1] * 2048)
    with Session(checkpoint("qwen3_moe"), capacity=6, cache_dir=tmp_path, max_context=300) as s:
        assert s.max_context == 300 and s.kv.reserve_bytes < session.kv.reserve_bytes
        assert len(list(s.stream([1] * 290, max_tokens=50))) <= 10  # prompt and reply share it
        with pytest.raises(ValueError, match="max_context"):
            s.generate([1] * 300)
    with pytest.raises(ValueError, match="more than the model's 2048 positions"):
        Session(checkpoint("qwen3_moe"), capacity=6, cache_dir=tmp_path, max_context=4096)


def test_context_shrinks_to_a_share_of_a_small_budget(checkpoint, session):
    config = json.loads((checkpoint("qwen3_moe") / "config.json").read_text())
    per_token = session.kv.bytes_per_token
    memory = int(1024 * per_token / KV_SHARE)  # its share holds 1024 tokens' keys and values
    plan = plan_context(session.model, config, max_context=None, kv_bits=None, memory=memory)
    assert plan.max_context == 1024 and "budget" in plan.reason


def test_cancelled_prefill_stops_between_chunks_and_keeps_the_prefix(ref, checkpoint, session):
    path = checkpoint("qwen3_moe")
    prompt = [1] + [40 + i % 200 for i in range(700)]
    session._cache.prefill_step_size = 64  # many chunks from a short prompt
    try:
        asked = []

        def cancelled() -> bool:
            asked.append(len(session._cache.tokens))
            return len(asked) > 3  # three chunks, then the client has gone

        before = session.stats()["session"]["cancelled"]
        assert list(session.stream(prompt, max_tokens=5, cancelled=cancelled)) == []
        assert asked == [0, 64, 128, 192]  # asked before each chunk, stopped at the fourth
        assert session._cache.tokens == prompt[:192]  # what the cache holds, exactly
        assert session.stats()["session"]["cancelled"] == before + 1
        # The next request reuses those chunks and still answers as the unmodified model does.
        reused = session.stats()["session"]["prefix_tokens_reused"]
        assert ref.run(session, prompt, 5) == ref.tokens(path, prompt, 5)
        assert session.stats()["session"]["prefix_tokens_reused"] == reused + 192
    finally:
        session._cache.prefill_step_size = 2048
