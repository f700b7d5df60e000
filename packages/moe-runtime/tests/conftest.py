"""Tiny checkpoints (moe-testing's, with a Qwen3-style chat template), built once per test
session, and the unmodified mlx-lm model to compare with."""

from __future__ import annotations

import types

import mlx.core as mx
import mlx_lm
import pytest

# The runtime's fixture: moe-testing's checkpoint with more layers and experts than its default,
# wider attention heads, 2048 positions (what the context-limit tests count on), and some routing
# skew, as trained models have, so that a recorded profile has layers to tell apart.
SIZES = dict(
    num_layers=4, num_experts=16, top_k=4, head_dim=32, skew=0.5,
    config_overrides={"max_position_embeddings": 2048},
)  # fmt: skip


@pytest.fixture(scope="session")
def checkpoint(moe_checkpoint):
    """`checkpoint(family="qwen3_moe") -> Path`: a tiny 4-bit checkpoint with a chat template."""

    def get(family: str = "qwen3_moe"):
        return moe_checkpoint(family, **SIZES)

    return get


_LOADED: dict = {}


def reference(path) -> tuple:
    key = str(path)
    if key not in _LOADED:
        _LOADED[key] = mlx_lm.load(key)
    return _LOADED[key]


def ref_tokens(path, prompt, max_tokens: int, **kwargs) -> list[int]:
    """Greedy tokens of stock mlx-lm: chat messages through the template, token ids as given."""
    model, tokenizer = reference(path)
    if prompt and isinstance(prompt[0], dict):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    return [
        r.token
        for r in mlx_lm.stream_generate(model, tokenizer, mx.array(prompt), max_tokens, **kwargs)
    ]


def session_tokens(session, prompt, max_tokens: int, **kwargs) -> list[int]:
    return [r.token for r in session.stream(prompt, max_tokens=max_tokens, **kwargs)]


@pytest.fixture(scope="session")
def ref():
    """Stock mlx-lm helpers: `ref.tokens(path, prompt, n)`, `ref.model(path)`, `ref.run(session, ...)`."""
    return types.SimpleNamespace(tokens=ref_tokens, model=reference, run=session_tokens)
