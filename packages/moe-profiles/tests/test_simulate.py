import itertools
from functools import cache

import numpy as np
import pytest

from moe_core import POLICIES
from moe_profiles import (
    Trace,
    allocate_slots,
    belady,
    choose_pinned,
    compare,
    simulate,
    synthetic_trace,
)


def _brute_force_misses(steps: list[tuple[int, ...]], capacity: int) -> int:
    """Fewest misses over every eviction choice (demand paging: load only what a step needs)."""

    @cache
    def best(t: int, resident: frozenset) -> int:
        if t == len(steps):
            return 0
        needed = set(steps[t])
        missing = needed - resident
        free = capacity - len(resident)
        evict = len(missing) - free
        options = [resident]
        if evict > 0:
            evictable = sorted(resident - needed)
            options = [resident - set(c) for c in itertools.combinations(evictable, evict)]
        return len(missing) + min(best(t + 1, frozenset(o | needed)) for o in options)

    return best(0, frozenset())


def _tiny_trace(rng, experts, capacity, steps):
    rows = []
    for _ in range(steps):
        size = int(rng.integers(1, min(2, capacity) + 1))
        rows.append(tuple(sorted(rng.choice(experts, size=size, replace=False).tolist())))
    return rows


@pytest.mark.parametrize("seed", range(40))
def test_belady_is_optimal_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    experts = int(rng.integers(4, 6))
    capacity = int(rng.integers(2, 4))
    steps = _tiny_trace(rng, experts, capacity, int(rng.integers(8, 11)))
    # Pad each step to k=2 with its own ids so the trace is [tokens, k].
    trace = Trace.from_steps([[np.array([[s[0], s[-1]]]) for s in steps]], [experts])
    result = belady(trace, capacity)
    assert result.misses == _brute_force_misses(steps, capacity)
    assert result.hits + result.misses == sum(len(s) for s in steps)


@pytest.mark.parametrize("seed", range(6))
def test_belady_bounds_every_policy(seed):
    rng = np.random.default_rng(seed)
    trace = synthetic_trace(
        3, 24, 4, 150, float(rng.uniform(0.3, 2.0)), seed, 4, prefill=int(rng.integers(0, 12))
    )
    for capacity in (4, 6, 12):
        best = belady(trace, capacity)
        for policy in POLICIES:
            result = simulate(trace, capacity, policy)
            assert result.hits + result.misses == best.hits + best.misses
            for ours, opt in zip(result.per_layer, best.per_layer, strict=True):
                assert opt.hits >= ours.hits, (policy, capacity, ours, opt)


def test_pinning_changes_the_replay_and_never_counts_pins_as_misses():
    trace = synthetic_trace(2, 16, 2, 100, 1.5, 0, 4)
    caps = [8, 8]
    pinned = choose_pinned(trace, caps)
    assert any(pinned.values())
    assert all(len(ids) <= 4 for ids in pinned.values())
    plain = simulate(trace, caps, "lru")
    with_pins = simulate(trace, caps, "lru", pinned=pinned)
    assert plain.hits + plain.misses == with_pins.hits + with_pins.misses
    assert with_pins.hits != plain.hits


def test_budget_allocation_beats_uniform():
    trace = synthetic_trace(6, 32, 4, 500, 1.2, 7, 6)
    for per_layer in (6, 12):
        total = 6 * per_layer
        caps = allocate_slots(trace, total, points=8)
        assert sum(caps) == total and all(4 <= c <= 32 for c in caps)
        assert len(set(caps)) > 1  # layers differ, so should their budgets
        allocated = simulate(trace, caps, "lfuda")
        uniform = simulate(trace, per_layer, "lfuda")
        assert allocated.hits > uniform.hits, (per_layer, caps)


def test_compare_rows():
    trace = synthetic_trace(2, 16, 2, 80, 1.0, 0, 2)
    rows = compare(trace, [0.25, 0.5], ["lru", "lfuda"])
    assert [(r["policy"], r["capacity"]) for r in rows] == [
        ("lru", 0.25),
        ("lfuda", 0.25),
        ("lru", 0.5),
        ("lfuda", 0.5),
    ]
    for row in rows:
        assert 0 < row["hit_rate"] <= row["belady_hit_rate"] <= 1
        assert row["ratio"] == pytest.approx(row["hit_rate"] / row["belady_hit_rate"])


def _with_predictions(trace: Trace, seed: int, accuracy: float) -> Trace:
    """The trace with, on one-token steps, a guess of each step's experts: each right with
    probability `accuracy`, else another expert."""
    rng = np.random.default_rng(seed)
    steps, predicted = [], []
    for layer, experts in zip(trace.layers, trace.num_experts, strict=True):
        steps.append(layer.steps)
        guesses = []
        for rows in layer.steps:
            if rows.shape[0] != 1:
                guesses.append(None)
                continue
            guess = rows[0].astype(np.int64)
            wrong = rng.random(guess.size) > accuracy
            guess[wrong] = rng.integers(0, experts, size=int(wrong.sum()))
            guesses.append(guess)
        predicted.append(guesses)
    return Trace.from_steps(steps, trace.num_experts, top_k=trace.top_k, predicted=predicted)


@pytest.mark.parametrize("seed", range(3))
def test_reads_ahead_count_as_reads_and_belady_still_bounds_them(seed):
    trace = _with_predictions(synthetic_trace(3, 32, 4, 200, 1.0, seed, 4, prefill=12), seed, 0.6)
    for capacity in (8, 16):
        best = belady(trace, capacity)
        for policy in POLICIES:
            plain = simulate(trace, capacity, policy)
            ahead = simulate(trace, capacity, policy, lookahead=True)
            assert plain.prefetched == 0 and plain.read_hit_rate == plain.hit_rate
            assert ahead.prefetched > 0
            # Served from memory more often, but every guess loaded was a read.
            assert ahead.read_hit_rate <= best.hit_rate + 1e-12, (policy, capacity)
            assert ahead.hits - ahead.prefetched <= best.hits


def test_perfect_guesses_turn_most_misses_into_reads_ahead():
    trace = _with_predictions(synthetic_trace(2, 32, 4, 120, 1.0, 0, 1), 0, 1.0)
    plain = simulate(trace, 8, "lru")
    result = simulate(trace, 8, "lru", lookahead=True)
    # Misses are left only where the layer was hitting and the guess skipped (7 steps in 8).
    assert result.misses < plain.misses / 2
    assert result.misses + result.prefetched >= plain.misses * 0.9


def test_compare_with_lookahead_reports_reads_and_served():
    trace = _with_predictions(synthetic_trace(2, 32, 4, 120, 1.0, 0, 2), 1, 0.5)
    (row,) = compare(trace, [8], ["lfuda"], lookahead=True)
    assert row["served_rate"] > row["hit_rate"]
    assert row["ratio"] == pytest.approx(row["hit_rate"] / row["belady_hit_rate"])
