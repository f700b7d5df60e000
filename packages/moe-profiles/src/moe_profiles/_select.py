"""Choosing a model's cache settings from its own traffic, and keeping only what generalises.

A recorded trace is split in time: the first part to fit on, the last to check on. Candidates
(a policy, slots spread over the layers by their hit curves or not, a share of each layer's slots
pinned to its most present experts) are fitted and scored on the first part; the best of them
replaces the current choice only if it also beats it on the held-out part, which no choice was
fitted on. Settings tuned on one stretch of traffic and lost on the next (per-layer allocations
and hot lists, in the field's experience) are refused that way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from moe_core import DEFAULT_POLICY

from ._budget import allocate_slots, choose_pinned, pin_limit
from ._simulate import belady, capacities_for, compare, simulate
from ._trace import Trace

# Policies worth trying on a trace; "stale" and "ahead" differ from LRU and LFUDA only where the
# lookahead's predictions are replayed.
CANDIDATES = ("lru", "lfu", "lfuda", "s3fifo", "markov")
AHEAD_CANDIDATES = (*CANDIDATES, "stale", "ahead")
PIN_SHARES = (0.0, 0.25, 0.5)
FRACTIONS = (0.25, 0.5)


@dataclass(frozen=True, slots=True)
class Choice:
    """Cache settings: the policy, whether slots are spread over the layers by their hit curves
    (else the same share of every layer), and the share of each layer's slots pinned."""

    policy: str = DEFAULT_POLICY
    spread: bool = False
    pin_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.pin_share <= 0.5:
            raise ValueError(f"pin share {self.pin_share} must be in 0..0.5")

    @property
    def label(self) -> str:
        return f"{self.policy}, {'spread' if self.spread else 'uniform'}, pin {self.pin_share:.0%}"

    def as_json(self) -> dict:
        return {"policy": self.policy, "spread": self.spread, "pin_share": self.pin_share}


@dataclass(frozen=True, slots=True)
class Scored:
    """A choice's hit rate on the fitted and the held-out part, each next to Belady's at the same
    slots, averaged over the capacities."""

    choice: Choice
    fit: float
    fit_belady: float
    held_out: float
    held_out_belady: float

    def as_json(self) -> dict:
        return {
            **self.choice.as_json(),
            "fit": self.fit,
            "fit_belady": self.fit_belady,
            "held_out": self.held_out,
            "held_out_belady": self.held_out_belady,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    current: Choice
    chosen: Choice  # the current one unless the best fitted one beat it on the held-out part
    best: Choice  # the best on the fitted part
    accepted: bool
    rows: tuple[Scored, ...] = field(default=())
    fractions: tuple[float | Sequence[int], ...] = FRACTIONS  # shares, or slots per layer
    held_out_share: float = 1 / 3

    def row(self, choice: Choice) -> Scored:
        return next(r for r in self.rows if r.choice == choice)

    def as_json(self) -> dict:
        return {
            "current": self.current.as_json(),
            "chosen": self.chosen.as_json(),
            "best_on_fit": self.best.as_json(),
            "accepted": self.accepted,
            "fractions": list(self.fractions),
            "held_out_share": self.held_out_share,
            "rows": [r.as_json() for r in self.rows],
        }


class _Fitter:
    """Settings fitted on the first part, cached: the spread and the pinned ranking depend only
    on the fraction, Belady's optimum only on the slots."""

    def __init__(self, fit: Trace) -> None:
        self.fit = fit
        self._caps: dict[tuple, list[int]] = {}
        self._ranked: dict[tuple, dict[int, list[int]]] = {}
        self._belady: dict[tuple[int, tuple[int, ...]], float] = {}

    def settings(
        self, choice: Choice, fraction: float | Sequence[int]
    ) -> tuple[list[int], dict[int, list[int]]]:
        """Slots per layer and pinned experts for `choice` at `fraction` of each layer's
        experts, fitted on the first part only."""
        key = (choice.spread, fraction if isinstance(fraction, float) else tuple(fraction))
        if key not in self._caps:
            caps = capacities_for(self.fit, fraction)
            if choice.spread:
                caps = allocate_slots(self.fit, sum(caps), points=8, refine=1)
            self._caps[key] = caps
            self._ranked[key] = choose_pinned(self.fit, caps)
        caps = self._caps[key]
        pinned = {}
        for layer, ids in self._ranked[key].items():
            take = min(int(choice.pin_share * caps[layer]), pin_limit(caps[layer], self.fit.top_k))
            if ids[:take]:
                pinned[layer] = ids[:take]
        return caps, pinned

    def belady(self, part: int, trace: Trace, caps: list[int]) -> float:
        key = (part, tuple(caps))
        if key not in self._belady:
            self._belady[key] = belady(trace, caps).hit_rate
        return self._belady[key]


def select(
    trace: Trace,
    *,
    current: Choice | None = None,
    policies: Sequence[str] | None = None,
    pin_shares: Sequence[float] = PIN_SHARES,
    spreads: Sequence[bool] = (False, True),
    fractions: Sequence[float | Sequence[int]] = FRACTIONS,
    held_out: float = 1 / 3,
    lookahead: bool = False,
    margin: float = 0.0,
) -> Selection:
    """Fit candidates on the first part of `trace` and keep the best only if it beats `current`
    (default: the default policy, uniform slots, nothing pinned) by more than `margin` on the
    last `held_out` share. The policy is chosen first (uniform slots, nothing pinned), then the
    spread (of `spreads`) and the pin share for it. A capacity in `fractions` is a share of
    each layer's experts or a list of slots per layer. With `lookahead`, the trace's predictions are replayed and
    reads ahead count as reads."""
    current = current or Choice()
    policies = tuple(policies or (AHEAD_CANDIDATES if lookahead else CANDIDATES))
    fit, test = trace.split(held_out)
    fitter = _Fitter(fit)
    scored: dict[Choice, Scored] = {}

    def score(choice: Choice) -> Scored:
        if choice not in scored:
            totals = np.zeros(4)
            for fraction in fractions:
                caps, pinned = fitter.settings(choice, fraction)
                # Pinned experts are read once at the start: reads, as Belady's first loads are.
                pin_reads = sum(len(ids) for ids in pinned.values())
                for i, part in enumerate((fit, test)):
                    ours = simulate(part, caps, choice.policy, pinned=pinned, lookahead=lookahead)
                    lookups = ours.hits + ours.misses
                    totals[2 * i] += max(0.0, ours.read_hit_rate - pin_reads / lookups)
                    totals[2 * i + 1] += fitter.belady(i, part, caps)
            scored[choice] = Scored(choice, *(totals / len(fractions)).tolist())
        return scored[choice]

    policy = max(policies, key=lambda p: score(Choice(p)).fit)
    for spread in spreads:
        for share in pin_shares:
            score(Choice(policy, spread, share))
    score(current)
    top = max(scored.values(), key=lambda r: (r.fit, r.choice == current))
    accepted = top.choice != current and top.held_out > scored[current].held_out + margin
    return Selection(
        current,
        top.choice if accepted else current,
        top.choice,
        accepted,
        tuple(scored.values()),
        tuple(fractions),
        held_out,
    )


def compare_held_out(
    trace: Trace,
    capacities: Sequence[int | float | Sequence[int]],
    policies: Sequence[str],
    *,
    held_out: float = 1 / 3,
    lookahead: bool = False,
) -> list[dict]:
    """`compare` on the first part of `trace` and on its held-out last part, side by side: rows
    of policy, capacity, fit and held_out hit rates, each with Belady's and the ratio."""
    fit, test = trace.split(held_out)
    rows = []
    pairs = zip(
        compare(fit, capacities, policies, lookahead=lookahead),
        compare(test, capacities, policies, lookahead=lookahead),
        strict=True,
    )
    for a, b in pairs:
        rows.append(
            {
                "policy": a["policy"],
                "capacity": a["capacity"],
                "fit_steps": fit.num_steps,
                "held_out_steps": test.num_steps,
                "fit_hit_rate": a["hit_rate"],
                "fit_belady_hit_rate": a["belady_hit_rate"],
                "fit_ratio": a["ratio"],
                "held_out_hit_rate": b["hit_rate"],
                "held_out_belady_hit_rate": b["belady_hit_rate"],
                "held_out_ratio": b["ratio"],
            }
        )
    return rows
