"""Replay a trace through the expert cache, and Belady's offline optimum as the ceiling.

`simulate` drives `moe_core.ExpertCache`, the class the offloaded layers use, so a policy measured
here is the policy that runs; nothing is reimplemented. `belady` knows the future: on a miss it
evicts the resident expert whose next use is furthest away, which no online policy can beat.

With `lookahead`, the predictions a trace holds are loaded ahead of each step as the offloaded
layers do. A load ahead is still a read: `SimResult.read_hit_rate` counts as hits only the
lookups that needed no read at all, the figure Belady's optimum bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import moe_core
from moe_core import POLICIES, ExpertCache, optimal_hits

from ._trace import Trace

DEFAULT_POLICY = moe_core.DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class LayerResult:
    layer: int
    capacity: int
    hits: int
    misses: int
    prefetched: int = 0  # loaded ahead by the lookahead

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class SimResult:
    """Hits and misses over all layers, and per layer."""

    hits: int
    misses: int
    per_layer: tuple[LayerResult, ...]
    prefetched: int = 0

    @property
    def hit_rate(self) -> float:
        """Lookups served from memory, an expert loaded ahead counting as served (as live)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def read_hit_rate(self) -> float:
        """Lookups that cost no read, on demand or ahead: what Belady's optimum bounds."""
        total = self.hits + self.misses
        return max(0, self.hits - self.prefetched) / total if total else 0.0

    @classmethod
    def of(cls, per_layer: Iterable[LayerResult]) -> SimResult:
        per_layer = tuple(per_layer)
        return cls(
            sum(r.hits for r in per_layer),
            sum(r.misses for r in per_layer),
            per_layer,
            sum(r.prefetched for r in per_layer),
        )


def capacities_for(trace: Trace, capacity: int | float | Sequence[int]) -> list[int]:
    """Slots per layer: one int for all, a fraction of each layer's experts, or one per layer."""
    if isinstance(capacity, float) and 0 < capacity <= 1:
        caps = [max(1, round(capacity * e)) for e in trace.num_experts]
    elif isinstance(capacity, int | np.integer):
        caps = [int(capacity)] * trace.num_layers
    elif isinstance(capacity, float):
        raise ValueError(f"capacity {capacity} is neither a fraction in (0, 1] nor a slot count")
    else:
        caps = [int(c) for c in capacity]
    if len(caps) != trace.num_layers:
        raise ValueError(f"{len(caps)} capacities for a trace of {trace.num_layers} layers")
    for i, (c, e) in enumerate(zip(caps, trace.num_experts, strict=True)):
        if not 1 <= c <= e:
            raise ValueError(f"capacity {c} of layer {i} is outside 1..{e}")
    return caps


def simulate(
    trace: Trace,
    capacity: int | float | Sequence[int],
    policy: str = DEFAULT_POLICY,
    *,
    pinned: Mapping[int, Iterable[int]] | None = None,
    prefetch: Mapping[int, Iterable[int]] | None = None,
    layers: Iterable[int] | None = None,
    lookahead: bool = False,
) -> SimResult:
    """Replay `trace` through one `ExpertCache` per layer, as the offloaded model would run it.

    `pinned` experts are loaded and pinned before the first step and `prefetch` ones loaded (warm
    start); neither load counts as a miss, as with `handle.pin` / `handle.prefetch`. With
    `lookahead`, each step's recorded prediction is loaded ahead (`ExpertCache.predict`) when
    the offloaded layers would: decode-sized steps, and while the layer hits only every 8th
    step; those loads are counted in `prefetched`.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
    caps = capacities_for(trace, capacity)
    pinned = pinned or {}
    prefetch = prefetch or {}
    results = []
    for index in range(trace.num_layers) if layers is None else layers:
        cache = ExpertCache(trace.num_experts[index], caps[index], policy)
        if pinned.get(index):
            cache.pin(np.fromiter(pinned[index], dtype=np.int64))
        if prefetch.get(index):
            cache.prefetch(np.fromiter(prefetch[index], dtype=np.int64))
        guesses = trace.layers[index].predicted if lookahead else None
        ahead = 0
        seen_misses, skipped = 0, 0
        for step, needed in enumerate(_unique_steps(trace, index)):
            if guesses is not None and needed.size * 2 <= caps[index]:
                guess = guesses[step][guesses[step] >= 0]
                # As moe-core's Lookahead: while the layer has been hitting, one guess in 8.
                quiet = cache.stats.misses == seen_misses
                skipped += quiet
                if guess.size and not (quiet and skipped % 8):
                    seen_misses = cache.stats.misses
                    ahead += len(cache.predict(guess.astype(np.int64)))
            for _ in cache.step(needed):
                pass
        results.append(LayerResult(index, caps[index], cache.stats.hits, cache.stats.misses, ahead))
    return SimResult.of(results)


def belady(trace: Trace, capacity: int | float | Sequence[int]) -> SimResult:
    """Belady's offline optimum for the same trace and capacities (cold start, no pinning)."""
    caps = capacities_for(trace, capacity)
    return SimResult.of(
        _belady_layer(trace, index, caps[index]) for index in range(trace.num_layers)
    )


def _unique_steps(trace: Trace, index: int) -> list[np.ndarray]:
    step_of, expert = _pairs(trace, index)
    bounds = np.searchsorted(step_of, np.arange(1, trace.layers[index].num_steps))
    return np.split(expert, bounds)


def _pairs(trace: Trace, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (step, expert) pairs of a layer, sorted by step then expert."""
    layer = trace.layers[index]
    experts = trace.num_experts[index]
    steps = np.repeat(layer.step_index(), layer.ids.shape[1])
    keys = np.sort(steps * experts + layer.ids.ravel().astype(np.int64))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # np.unique, without its hashing
    return keys // experts, keys % experts


def _belady_layer(trace: Trace, index: int, capacity: int) -> LayerResult:
    hits, misses = optimal_hits(_unique_steps(trace, index), capacity)
    return LayerResult(index, capacity, hits, misses)


def compare(
    trace: Trace,
    capacities: Sequence[int | float | Sequence[int]],
    policies: Sequence[str] = POLICIES,
    *,
    lookahead: bool = False,
) -> list[dict]:
    """Rows of policy, capacity, hit_rate, belady_hit_rate and ratio (hit rate / Belady's), for
    every capacity (an int or fraction for every layer, or a list per layer) and policy. With
    `lookahead`, `hit_rate` is the read hit rate (a load ahead counts as a read) and
    `served_rate` the share served from memory at the step."""
    rows = []
    for capacity in capacities:
        caps = capacities_for(trace, capacity)
        best = belady(trace, caps)
        for policy in policies:
            result = simulate(trace, caps, policy, lookahead=lookahead)
            rate = result.read_hit_rate
            rows.append(
                {
                    "policy": policy,
                    "capacity": capacity if not isinstance(capacity, Sequence) else list(caps),
                    "slots": sum(caps),
                    "hits": result.hits,
                    "misses": result.misses,
                    "prefetched": result.prefetched,
                    "hit_rate": rate,
                    "served_rate": result.hit_rate,
                    "belady_hit_rate": best.hit_rate,
                    "ratio": rate / best.hit_rate if best.hit_rate else 1.0,
                }
            )
    return rows


def best_policy(rows: list[dict]) -> str:
    """The policy with the highest mean ratio to Belady over `compare`'s rows."""
    by_policy: dict[str, list[float]] = {}
    for row in rows:
        by_policy.setdefault(row["policy"], []).append(row["ratio"])
    return max(by_policy, key=lambda p: float(np.mean(by_policy[p])))
