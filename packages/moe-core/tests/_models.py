"""Shared helpers: run the unmodified and the offloaded model side by side."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

import moe_core


def reference(path: Path):
    model, _ = load_model(Path(path))
    return model


def offloaded(path: Path, **kwargs):
    model, _ = load_model(Path(path), lazy=True)
    handle = moe_core.offload(model, path, **kwargs)
    mx.eval(model.parameters())
    return model, handle


def prompt(vocab: int, length: int, batch: int = 1, seed: int = 0) -> mx.array:
    rng = np.random.default_rng(seed)
    return mx.array(rng.integers(3, vocab, size=(batch, length)))


def greedy(model, tokens: mx.array, steps: int) -> tuple[list[mx.array], list[int]]:
    """Prefill `tokens`, then decode greedily; returns every logits array and the tokens."""
    cache = make_prompt_cache(model)
    logits = model(tokens, cache=cache)
    all_logits, out = [logits], []
    for _ in range(steps):
        nxt = mx.argmax(logits[:, -1, :], axis=-1)
        out.append(int(nxt[0]))
        logits = model(nxt[:, None], cache=cache)
        all_logits.append(logits)
    mx.eval(all_logits)
    return all_logits, out


def identical(a: list[mx.array], b: list[mx.array]) -> bool:
    # NaN where the unmodified model has NaN counts as equal (MLX CUDA 0.32.4 gives NaN prefill
    # logits for some tiny q4 fixtures, offloaded or not).
    return len(a) == len(b) and all(
        mx.array_equal(x, y, equal_nan=True).item() for x, y in zip(a, b, strict=True)
    )


def vocab_size(model) -> int:
    return int(model.args.vocab_size)
