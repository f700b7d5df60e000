"""The shipped demo model: a Session with no model argument opens it, offloaded below its expert
count, and its greedy continuation of Python source equals the unmodified mlx-lm model's."""

from __future__ import annotations

import mlx_lm
from mlx_lm.generate import stream_generate

from moe_runtime import Session, demo_model_path

PROMPT = "def fibonacci(n):"
TOKENS = 24
CAPACITY = 16  # of 64 experts per layer, top-4


def test_demo_model_matches_mlx_lm_when_offloaded(tmp_path):
    model, tokenizer = mlx_lm.load(str(demo_model_path()))
    want = [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=TOKENS)]
    del model

    with Session(capacity=CAPACITY, cache_dir=tmp_path) as s:
        assert s.model_path == demo_model_path()
        assert s.handle.capacity == [CAPACITY] * 8
        assert s.handle.num_experts == [64] * 8
        got = [r.token for r in s.stream(PROMPT, max_tokens=TOKENS)]
        assert s.stats()["misses"] > 0  # experts really were read on demand

    assert got == want
    text = tokenizer.decode(got)
    # Trained on Python source: it continues a def with a docstring or code.
    assert any(word in text for word in ('"""', "return", "if ", "(", ">>> ", "import ")), text
