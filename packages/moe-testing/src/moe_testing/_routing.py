"""How a model's routers spread tokens over experts, measured on a forward pass."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from moe_testing._families import FAMILY


class _Tap:
    """Stands in for a module and keeps a copy of its input."""

    def __init__(self, inner: nn.Module, sink: list[mx.array]):
        self.inner = inner
        self._keep = sink.append

    def __call__(self, x: mx.array, *args, **kwargs):
        self._keep(x)
        return self.inner(x, *args, **kwargs)


def capture_inputs(
    model: nn.Module, targets: list[tuple[nn.Module, str]], tokens: np.ndarray
) -> list[np.ndarray]:
    """Run `model` on `tokens` [B, L] and return what each `parent.<name>` module received,
    flattened to `[B * L, D]` float32."""
    sinks: list[list[mx.array]] = [[] for _ in targets]
    originals = [parent[name] for parent, name in targets]
    # A module is a dict of its children, so a stand-in goes in by key and out again.
    for (parent, name), inner, sink in zip(targets, originals, sinks, strict=True):
        parent[name] = _Tap(inner, sink)
    try:
        mx.eval(model(mx.array(tokens)))
    finally:
        for (parent, name), inner in zip(targets, originals, strict=True):
            parent[name] = inner
    return [
        np.concatenate([np.array(x.astype(mx.float32)).reshape(-1, x.shape[-1]) for x in sink])
        for sink in sinks
    ]


def random_tokens(vocab_size: int, num_tokens: int, seq_len: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, (max(1, num_tokens // seq_len), seq_len))  # [B, L]


def routing_counts(
    model: nn.Module, *, num_tokens: int = 2048, seq_len: int = 64, seed: int = 0
) -> np.ndarray:
    """How often each expert of each MoE layer is picked: `[num_moe_layers, E]` counts.

    Runs the model on `num_tokens` random token ids, in whole sequences of `seq_len`, and
    routes what each router received, so the device must be able to run the model (on CPU:
    any precision but unquantized bf16). Each layer picks `num_experts_per_tok` per token.
    """
    if model.model_type not in FAMILY:
        raise ValueError(f"no routing for model type {model.model_type!r}; known: {list(FAMILY)}")
    family = FAMILY[model.model_type]
    blocks = [family.moe_block_of(model, i) for i in family.moe_layers(model)]
    tokens = random_tokens(model.args.vocab_size, num_tokens, seq_len, seed)
    inputs = capture_inputs(model, [(block, family.router) for block in blocks], tokens)
    counts = []
    for block, x in zip(blocks, inputs, strict=True):
        inds = family.route(block, mx.array(x), model.args.num_experts_per_tok)  # [N, k]
        num_experts = getattr(block, family.experts).gate_proj.num_experts
        counts.append(np.bincount(np.array(inds).ravel(), minlength=num_experts))
    return np.stack(counts)


def top_share(counts: np.ndarray, fraction: float = 0.2) -> float:
    """The share of routings that the busiest `fraction` of experts take, averaged over layers.

    With E experts that is the top `round(fraction * E)` (at least one), so uniform routing
    gives that count over E: 3/16 = 0.19 for 16 experts, 2/8 = 0.25 for 8.
    """
    counts = np.atleast_2d(counts)
    top = max(1, round(fraction * counts.shape[-1]))
    busiest = -np.sort(-counts, axis=-1)[:, :top]
    return float(np.mean(busiest.sum(-1) / counts.sum(-1)))
