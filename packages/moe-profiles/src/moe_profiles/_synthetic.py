"""Synthetic routing traces with the shape of real ones, for tests and benchmarks.

Real routers are skewed (Zipf-like popularity), more in some layers than in others, drift with the
topic of a prompt and show temporal locality (runs of tokens favour the same few experts).
"""

from __future__ import annotations

import numpy as np

from ._trace import LayerTrace, Segment, Trace


def synthetic_trace(
    num_layers: int = 8,
    num_experts: int = 64,
    top_k: int = 4,
    steps: int = 2000,
    skew: float = 1.0,
    seed: int = 0,
    segments: int = 8,
    *,
    locality: float = 1.5,
    prefill: int = 0,
    fingerprint: str = "synthetic",
) -> Trace:
    """A trace of `steps` decode steps per layer split into `segments` prompts.

    Layer `l` has Zipf exponent between 0.25x and 1.75x `skew` (layers are shuffled, so skew is
    not monotone in depth). Each segment perturbs the popularity ranking a little (a new topic);
    within it, phases of ~16 steps boost a few experts by `locality` (in logits). With `prefill`,
    every segment starts with one step of that many tokens.
    """
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k {top_k} must be in 1..{num_experts}")
    rng = np.random.default_rng(seed)
    exponents = skew * np.linspace(0.25, 1.75, num_layers)
    rng.shuffle(exponents)
    segments = max(1, min(segments, steps))
    seg_starts = np.linspace(0, steps, segments + 1).astype(int)[:-1]
    seg_of_step = np.searchsorted(seg_starts, np.arange(steps), side="right") - 1
    layers = []
    for exponent in exponents:
        base = -exponent * np.log(np.arange(1, num_experts + 1))  # log Zipf weights by rank
        rank = rng.permutation(num_experts)  # expert -> popularity rank
        logits = np.empty((segments, num_experts))
        for s in range(segments):
            # A topic shift: a few experts trade places in the ranking.
            topic = rank.copy()
            swap = rng.choice(num_experts, size=max(2, num_experts // 8), replace=False)
            topic[swap] = topic[rng.permutation(swap)]
            logits[s] = base[topic]
        # Phases of locality: geometric lengths averaging 16 steps, each boosting top_k experts.
        lengths = rng.geometric(1 / 16, size=steps)
        phase_of_step = np.searchsorted(np.cumsum(lengths), np.arange(steps), side="right")
        n_phases = int(phase_of_step.max()) + 1
        boost = np.zeros((n_phases, num_experts))
        favoured = np.argsort(rng.random((n_phases, num_experts)), axis=1)[:, :top_k]
        np.put_along_axis(boost, favoured, locality, axis=1)
        tokens_per_step = np.ones(steps, dtype=np.int64)
        if prefill:
            tokens_per_step[seg_starts] = prefill
        token_step = np.repeat(np.arange(steps), tokens_per_step)
        scores = logits[seg_of_step[token_step]] + boost[phase_of_step[token_step]]
        scores = scores + rng.gumbel(size=scores.shape)  # Gumbel top-k samples without replacement
        ids = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
        offsets = np.concatenate([[0], np.cumsum(tokens_per_step)])
        layers.append(LayerTrace(np.sort(ids, axis=1).astype(np.int16), offsets))
    segs = tuple(
        Segment(f"segment-{i}", (int(start),) * num_layers) for i, start in enumerate(seg_starts)
    )
    return Trace(tuple(layers), (num_experts,) * num_layers, top_k, fingerprint, segs)
