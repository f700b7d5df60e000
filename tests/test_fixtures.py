"""The `moe_checkpoint` fixture, as the other packages' tests get it: from moe-testing's pytest
plugin, in an environment with every package installed."""

from __future__ import annotations

import mlx.core as mx
import pytest

from moe_testing import FAMILIES, reference_model


@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_checkpoint_runs_under_mlx_lm(moe_checkpoint, family):
    path = moe_checkpoint(family)
    assert moe_checkpoint(family) == path  # built once per session
    model, tokenizer = reference_model(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "def fibonacci(n):"}], add_generation_prompt=True
    )
    logits = model(mx.array([prompt]))
    assert logits.shape == (1, len(prompt), len(tokenizer.get_vocab()))
    assert mx.isfinite(logits).all()
