"""Prompt caches that outlive a request and a restart: a conversation continued from a snapshot
(in memory, or on disk after the session was closed and a new one started) gives the tokens of a
fresh prefill by stock mlx-lm and the logits of the same continuation without the restart; the
memory and disk limits hold; a corrupt or foreign file is ignored with a warning."""

from __future__ import annotations

import shutil
import warnings

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from moe_runtime import PromptCacheWarning, Session

FAMILIES = ["qwen3_moe", "qwen3_next"]
CAPACITY = 6
TURN1 = [{"role": "user", "content": "hello how are you today my friend"}]


def open_session(path, tmp_path, **kw):
    kw.setdefault("prompt_cache_dir", tmp_path / "prompts")
    if "memory" not in kw:
        kw["capacity"] = CAPACITY
    return Session(path, cache_dir=tmp_path / "cache", **kw)


def run(session, messages, n=8):
    """Greedy tokens, the first step's log probabilities and how many prompt tokens were cached."""
    out = list(session.stream(messages, max_tokens=n))
    return (
        [r.token for r in out],
        np.array(out[0].logprobs.astype(mx.float32)),
        out[0].cached_tokens,
    )


def reference(ref, path, messages, n=8):
    model, tokenizer = ref.model(path)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    out = list(mlx_lm.stream_generate(model, tokenizer, mx.array(prompt), n))
    return [r.token for r in out], np.array(out[0].logprobs.astype(mx.float32))


def second_turn(ref, path, first_tokens):
    _, tokenizer = ref.model(path)
    return [
        *TURN1,
        {"role": "assistant", "content": tokenizer.decode(first_tokens)},
        {"role": "user", "content": "what is the cat doing on the mat"},
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_next_turn_after_a_restart_is_exact(ref, checkpoint, family, tmp_path):
    path = checkpoint(family)
    with open_session(path, tmp_path) as s:
        first, _, cached = run(s, TURN1)
        assert cached == 0 and first == reference(ref, path, TURN1)[0]
        assert s.stats()["session"]["prompt_cache"]["disk_writes"] >= 1
    turn2 = second_turn(ref, path, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on disk may be ignored
        restarted = open_session(path, tmp_path)
    with restarted as s:
        tokens, logprobs, cached = run(s, turn2)
        counts = s.stats()["session"]["prefix_cache"]
        prompt_tokens = len(s.encode_prompt(turn2))
    assert counts["loaded"] == 1
    # The same two turns in one session, without a disk: turn 2 from the cache in memory.
    with open_session(path, tmp_path / "other", prompt_cache_dir=None) as s:
        run(s, TURN1)
        live_tokens, live_logprobs, live_cached = run(s, turn2)
    want_tokens, want_logprobs = reference(ref, path, turn2)
    assert tokens == want_tokens == live_tokens
    # At least turn 1's messages came from the file, as they came from memory.
    _, tokenizer = ref.model(path)
    boundary = len(tokenizer.apply_chat_template(TURN1, add_generation_prompt=False))
    assert cached == live_cached and boundary <= cached < prompt_tokens
    assert np.array_equal(logprobs, live_logprobs)  # bit for bit: the same state, the same steps
    # Against a fresh prefill (other chunks, so other rounding): close.
    assert np.abs(logprobs - want_logprobs).max() < 1e-3


def test_interleaved_conversations_keep_their_prefixes(ref, checkpoint, tmp_path):
    path = checkpoint("qwen3_next")
    other = [{"role": "user", "content": "tell me about the dog"}]
    with open_session(path, tmp_path, prompt_cache_dir=None) as s:
        first, _, _ = run(s, TURN1)
        run(s, other)
        turn2 = second_turn(ref, path, first)
        tokens, _, cached = run(s, turn2)
        assert s.stats()["session"]["prefix_cache"]["restored"] >= 1
    assert cached > 0 and tokens == reference(ref, path, turn2)[0]


def test_memory_limit_is_kept_and_counted_by_the_plan(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    limit = 600_000  # two conversations of ~262 KB each
    with open_session(path, tmp_path, memory="2GB", prompt_cache_memory=limit) as s:
        assert s.handle.plan.reserve_bytes == s.kv.reserve_bytes + limit
        for i in range(6):  # conversations that each push the last one out of the live cache
            s.generate([{"role": "user", "content": f"story number {i} " * 20}], max_tokens=4)
            stats = s.stats()["session"]["prompt_cache"]
            assert stats["memory_bytes"] <= limit == stats["memory_limit"]
        assert stats["evicted"] > 0 and stats["memory_entries"] >= 1
    with open_session(path, tmp_path, memory="2GB", prefix_cache=False) as s:
        assert s.handle.plan.reserve_bytes == s.kv.reserve_bytes  # nothing kept, nothing counted
        assert s.stats()["session"]["prompt_cache"]["memory_limit"] == 0


def test_disk_limit_evicts_the_least_recently_used(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    limit = 600_000
    root = tmp_path / "prompts"
    with open_session(path, tmp_path, prompt_cache_disk=limit) as s:
        for i in range(6):
            s.generate([{"role": "user", "content": f"story number {i} " * 20}], max_tokens=4)
            files = list(root.glob("*/*.safetensors"))
            assert sum(f.stat().st_size for f in files) <= limit
        assert 1 <= len(files) < 6
        stats = s.stats()["session"]["prompt_cache"]
        assert stats["disk_writes"] == 6 and stats["disk_bytes"] <= limit
    with open_session(path, tmp_path, prompt_cache_disk=0) as s:  # no disk tier
        s.generate(TURN1, max_tokens=2)
        assert "disk_entries" not in s.stats()["session"]["prompt_cache"]


def write_turn(path, tmp_path, **kw):
    with open_session(path, tmp_path, **kw) as s:
        first, _, _ = run(s, TURN1)
    return first


def test_corrupt_and_foreign_files_are_ignored_with_a_warning(ref, checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    first = write_turn(path, tmp_path)
    (directory,) = (tmp_path / "prompts").iterdir()
    good = sorted(directory.glob("*.safetensors"))
    # A file of another model (Qwen3-Next's) copied in, one cut short, one of noise.
    elsewhere = tmp_path / "elsewhere"
    write_turn(checkpoint("qwen3_next"), elsewhere)
    foreign = next((elsewhere / "prompts").glob("*/*.safetensors"))  # its snapshot or state
    shutil.copy(foreign, directory / "foreign.safetensors")
    (directory / "noise.safetensors").write_bytes(b"\x07" * 100)
    data = good[0].read_bytes()
    good[0].write_bytes(data[: len(data) // 2])  # its header is whole, its arrays are not
    with pytest.warns(PromptCacheWarning) as caught:
        s = open_session(path, tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "foreign.safetensors" in messages and "another model" in messages
    assert "noise.safetensors" in messages
    with s:
        turn2 = second_turn(ref, path, first)
        with pytest.warns(PromptCacheWarning, match="ignoring prompt cache file"):
            tokens, _, cached = run(s, turn2)  # the truncated file fails as it loads
        assert s.stats()["session"]["prefix_cache"]["loaded"] == 0
    assert cached == 0 and tokens == reference(ref, path, turn2)[0]


def test_other_settings_never_share_a_cache(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    write_turn(path, tmp_path)
    with open_session(path, tmp_path, kv_bits=8) as s:
        assert s.stats()["session"]["prompt_cache"]["disk_entries"] == 0
        out = list(s.stream(TURN1, max_tokens=2))
    assert out[0].cached_tokens == 0
    assert len(list((tmp_path / "prompts").iterdir())) == 2  # a directory per key


@pytest.mark.parametrize("family", FAMILIES)
def test_conversations_decoded_together_each_resume_from_the_cache(
    ref, checkpoint, family, tmp_path
):
    """Two conversations in one batch: each finished request's cache comes back to the session,
    the one it replaces goes to the snapshots, so both next turns prefill only their new tokens."""
    path = checkpoint(family)
    other = [{"role": "user", "content": "tell me about the dog"}]
    with open_session(path, tmp_path, prompt_cache_dir=None) as s:
        batch = s.open_batch(2)
        ids = {batch.add(TURN1, max_tokens=6): 0, batch.add(other, max_tokens=6): 1}
        answers: dict = {0: [], 1: []}
        while len(batch):
            for uid, r in batch.step():
                answers[ids[uid]].append(r.token)
        batch.close()
        _, tokenizer = ref.model(path)
        for turn, answer in ((TURN1, answers[0]), (other, answers[1])):
            follow = [*turn, {"role": "assistant", "content": tokenizer.decode(answer)}]
            follow.append({"role": "user", "content": "and then what happened"})
            tokens, _, cached = run(s, follow)
            assert cached >= len(tokenizer.apply_chat_template(turn, add_generation_prompt=False))
            assert tokens == reference(ref, path, follow)[0]
