"""Greedy output through a Session equals the unmodified mlx-lm model's, at a capacity below the
number of experts: single and multi-turn, with and without the prefix cache and warm state."""

from __future__ import annotations

import pytest

from moe_runtime import Session, generate

FAMILIES = ["qwen3_moe", "qwen3_next"]
CAPACITY = 6  # of 16 experts, top-4


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def chat(ref, session, path, turns, *, max_tokens=12):
    """Run a conversation; every turn must match stock mlx-lm on the whole conversation so far."""
    messages = []
    for text in turns:
        messages.append({"role": "user", "content": text})
        want = ref.tokens(path, messages, max_tokens)
        got = ref.run(session, messages, max_tokens)
        assert got == want, f"turn {len(messages) // 2 + 1}"
        _, tokenizer = ref.model(path)
        messages.append({"role": "assistant", "content": tokenizer.decode(got)})


TURNS = ["hello how are you", "what is your name", "the cat sat on the mat"]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_multi_turn_chat(ref, checkpoint, family, prefix_cache, tmp_path):
    path = checkpoint(family)
    with Session(path, capacity=CAPACITY, cache_dir=tmp_path, prefix_cache=prefix_cache) as s:
        assert s.handle.capacity == [CAPACITY] * len(s.handle.capacity)
        chat(ref, s, path, TURNS)
        stats = s.stats()["session"]
        assert stats["requests"] == 3
        if prefix_cache:
            assert stats["prefix_tokens_reused"] > 0
        else:
            assert stats["prefix_tokens_reused"] == 0


def test_token_prompts_extend_and_diverge(ref, checkpoint, family, tmp_path):
    """Token-id prompts that extend the cache exactly, repeat it, and diverge inside it."""
    path = checkpoint(family)
    with Session(path, capacity=CAPACITY, cache_dir=tmp_path) as s:
        first = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]
        out = ref.run(s, first, 8)
        assert out == ref.tokens(path, first, 8)
        # Extends everything the cache holds: only the new tokens are prefilled.
        second = first + out + [50, 51, 52]
        before = s.stats()["session"]["prefix_tokens_reused"]
        assert ref.run(s, second, 8) == ref.tokens(path, second, 8)
        assert s.stats()["session"]["prefix_tokens_reused"] - before == len(first) + len(out)
        # The same prompt again, then one that diverges in its middle.
        assert ref.run(s, second, 8) == ref.tokens(path, second, 8)
        third = [*first[:5], 60, 61, 62, 63]
        assert ref.run(s, third, 8) == ref.tokens(path, third, 8)
        assert ref.run(s, first, 8) == out
        counts = s.stats()["session"]["prefix_cache"]
    # The diverging prompt sends the cache of `second` to the snapshots, whence `first` returns.
    if family == "qwen3_next":  # linear attention: resumed from a prompt snapshot, or recomputed
        assert counts == {"trimmed": 0, "restored": 2, "loaded": 0, "recomputed": 1}
    else:
        assert counts == {"trimmed": 2, "restored": 1, "loaded": 0, "recomputed": 0}


def test_raw_text_and_one_shot_generate(ref, checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    _, tokenizer = ref.model(path)
    prompt = "the dog sat on"
    want = tokenizer.decode(ref.tokens(path, tokenizer.encode(prompt), 10))
    assert generate(path, prompt, max_tokens=10, capacity=CAPACITY, cache_dir=tmp_path) == want


def test_repetition_penalty_sees_the_cached_prefix(ref, checkpoint, family, tmp_path):
    from mlx_lm.sample_utils import make_logits_processors

    path = checkpoint(family)
    kw = dict(repetition_penalty=1.5)
    with Session(path, capacity=CAPACITY, cache_dir=tmp_path) as s:
        first = [1, 30, 31, 32, 33, 34]
        out = ref.run(s, first, 6, **kw)
        second = first + out + [35, 36]
        got = ref.run(s, second, 6, **kw)
    procs = make_logits_processors(repetition_penalty=1.5)
    assert got == ref.tokens(path, second, 6, logits_processors=procs)
    assert s.stats()["session"]["prefix_tokens_reused"] > 0
