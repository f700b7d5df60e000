"""Per-layer slot budgets and pinned sets, measured on a trace.

Layers differ a lot: a layer whose router is skewed gets most of its hits from a few slots, a flat
one needs many. `allocate_slots` measures each layer's hits as a function of its capacity (by
simulation) and hands out the total budget where the next slot saves the most misses.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ._simulate import DEFAULT_POLICY, simulate
from ._trace import Trace

Curve = list[tuple[int, int]]  # (capacity, hits) points, capacity ascending


def hit_curves(
    trace: Trace, *, policy: str = DEFAULT_POLICY, min_slots: int | None = None, points: int = 12
) -> list[Curve]:
    """Per layer, hits at about `points` capacities from `min_slots` to all experts."""
    low = trace.top_k if min_slots is None else min_slots
    curves = []
    for index, experts in enumerate(trace.num_experts):
        start = max(1, min(low, experts))
        grid = np.concatenate(
            [np.geomspace(start, experts, points), np.linspace(start, experts, max(2, points // 2))]
        )
        curves.append(_measure(trace, index, policy, {}, np.unique(grid.round()).astype(int)))
    return curves


def refine_curves(
    trace: Trace, curves: list[Curve], around: Sequence[int], *, policy: str = DEFAULT_POLICY
) -> list[Curve]:
    """Add measurements at every capacity within a quarter of `around[layer]` of it, where the
    allocation is decided and linear interpolation between coarse points would mislead."""
    out = []
    for index, (curve, cap) in enumerate(zip(curves, around, strict=True)):
        low, high = curve[0][0], curve[-1][0]
        width = max(2, cap // 4)
        grid = [c for c in range(max(low, cap - width), min(high, cap + width) + 1)]
        out.append(_measure(trace, index, policy, dict(curve), grid))
    return out


def _measure(trace: Trace, index: int, policy: str, known: dict[int, int], grid) -> Curve:
    caps = [1] * trace.num_layers
    for capacity in grid:
        if capacity not in known:
            caps[index] = int(capacity)
            known[int(capacity)] = simulate(trace, caps, policy, layers=[index]).hits
    return sorted(known.items())


def allocate_from_curves(
    curves: Sequence[Curve], total_slots: int, *, min_slots: Sequence[int]
) -> list[int]:
    """Greedy allocation by marginal hits per slot over the concave hull of each layer's curve
    (on a concave curve greedy is optimal; the hull smooths out measurement noise)."""
    base = [max(m, curve[0][0]) for m, curve in zip(min_slots, curves, strict=True)]
    top = [curve[-1][0] for curve in curves]
    if total_slots < sum(base):
        raise ValueError(
            f"total of {total_slots} slots is below the minimum of {sum(base)} "
            f"({len(curves)} layers x at least {min(base)} slots each)"
        )
    caps = list(base)
    left = total_slots - sum(base)
    segments = []  # (gain per slot, layer, start capacity, end capacity)
    for layer, curve in enumerate(curves):
        hull = _upper_hull([(c, h) for c, h in curve if c >= base[layer]] or [curve[-1]])
        if hull[0][0] > base[layer]:  # base sits between two measured points
            hull.insert(0, (base[layer], _interpolate(curve, base[layer])))
        for (c0, h0), (c1, h1) in itertools.pairwise(hull):
            segments.append(((h1 - h0) / (c1 - c0), layer, c0, c1))
    # Per layer, hull slopes decrease, so a global order by slope fills each layer left to right.
    segments.sort(key=lambda s: (-s[0], s[1], s[2]))
    for _, layer, c0, c1 in segments:
        if left <= 0:
            break
        take = min(left, c1 - c0)
        caps[layer] += take
        left -= take
    if left > 0:  # every layer is full
        caps = [min(c, t) for c, t in zip(caps, top, strict=True)]
    return caps


def allocate_slots(
    trace: Trace,
    total_slots: int,
    *,
    policy: str = DEFAULT_POLICY,
    min_slots: int | None = None,
    points: int = 12,
    refine: int = 2,
) -> list[int]:
    """Split `total_slots` across the trace's MoE layers where they save the most misses.

    Every layer gets at least `min_slots` (default: top_k, so one token's experts fit) and at most
    its number of experts. Each layer's hits against capacity are measured at `points`
    capacities, then `refine` times at every capacity near the allocation.
    """
    return measure_budget(
        trace, total_slots, policy=policy, min_slots=min_slots, points=points, refine=refine
    )[0]


def measure_budget(
    trace: Trace,
    total_slots: int,
    *,
    policy: str = DEFAULT_POLICY,
    min_slots: int | None = None,
    points: int = 12,
    refine: int = 2,
) -> tuple[list[int], list[Curve]]:
    """`allocate_slots`, also returning the hit curves it measured."""
    low = trace.top_k if min_slots is None else min_slots
    mins = [min(low, e) for e in trace.num_experts]
    curves = hit_curves(trace, policy=policy, min_slots=low, points=points)
    if total_slots >= sum(trace.num_experts):
        return list(trace.num_experts), curves
    caps = allocate_from_curves(curves, total_slots, min_slots=mins)
    for _ in range(refine):
        curves = refine_curves(trace, curves, caps, policy=policy)
        caps = allocate_from_curves(curves, total_slots, min_slots=mins)
    return caps, curves


def choose_pinned(
    trace: Trace,
    capacities: Sequence[int],
    *,
    presence: float = 0.9,
    windows: int = 8,
) -> dict[int, list[int]]:
    """Experts to pin per layer: those selected in at least `presence` of the prompt segments.

    How many is therefore read from the trace, not fixed; it is capped so pinned experts take at
    most half the layer's slots and leave at least top_k slots free for what a token needs. Each
    layer's list is ordered most valuable first (presence, then total count), so a smaller
    capacity can take a prefix.
    """
    if len(capacities) != trace.num_layers:
        raise ValueError(f"{len(capacities)} capacities for a trace of {trace.num_layers} layers")
    pinned: dict[int, list[int]] = {}
    for index, layer in enumerate(trace.layers):
        experts = trace.num_experts[index]
        step_of = layer.step_index()
        bounds = trace.segment_bounds(index, windows=windows)
        seen = np.zeros(experts, dtype=np.int64)
        for start, end in bounds:
            rows = (step_of >= start) & (step_of < end)
            seen += np.bincount(layer.ids[rows].ravel(), minlength=experts) > 0
        counts = np.bincount(layer.ids.ravel(), minlength=experts)
        share = seen / max(len(bounds), 1)
        order = np.lexsort((-counts, -share))
        chosen = order[share[order] >= presence]
        chosen = chosen[counts[chosen] > 0]
        limit = pin_limit(capacities[index], trace.top_k)
        pinned[index] = chosen[:limit].tolist()
    return pinned


def pin_limit(capacity: int, top_k: int) -> int:
    """At most half the slots, and at least top_k slots left free."""
    return max(0, min(capacity // 2, capacity - top_k))


def _upper_hull(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    hull: list[tuple[int, float]] = []
    for p in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _interpolate(curve: Curve, capacity: int) -> float:
    xs, ys = zip(*curve, strict=True)
    return float(np.interp(capacity, xs, ys))
