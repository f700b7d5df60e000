"""Profiles: what a model's routing looks like, as a versioned JSON document.

A profile holds per-layer activation counts, per-layer hit curves (hits against capacity, measured
by simulation) from which slot budgets for any total are derived, and the pinned set. It names the
model by fingerprint and is refused for any other model. It also holds the cache settings chosen
on its trace (`select`: policy, whether to spread slots by the curves, the share of slots pinned),
each kept only when it beat the defaults on the part of the trace it was not fitted on.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import moe_core

from ._budget import allocate_from_curves, choose_pinned, hit_curves, measure_budget, pin_limit
from ._errors import ProfileError
from ._select import Choice, select
from ._simulate import DEFAULT_POLICY
from ._trace import Trace

FORMAT = "moe-profile"
VERSION = 1
# A trace shorter than this is not split to choose settings (too little to hold out).
MIN_SELECT_STEPS = 64
_REQUIRED = ("fingerprint", "num_experts", "top_k", "counts", "pinned", "curves", "source")


@dataclass(frozen=True, slots=True)
class Profile:
    fingerprint: str
    num_experts: tuple[int, ...]
    top_k: int
    counts: tuple[tuple[int, ...], ...]  # per layer, selections of each expert
    pinned_order: tuple[tuple[int, ...], ...]  # per layer, experts to pin, most valuable first
    curves: tuple[tuple[tuple[int, int], ...], ...]  # per layer, (capacity, hits) points
    source: Mapping[str, Any] = field(default_factory=dict)  # prompts/preset, tokens, date
    policy: str = DEFAULT_POLICY
    total_slots: int | None = None  # the budget the pinned set was chosen for, if any
    budget: tuple[int, ...] | None = None  # per-layer capacities for total_slots
    # Whether `spread` moves slots between layers, and the share of a layer's slots pinned (at
    # most half). A profile written before these were chosen spread and pinned up to half.
    spread_slots: bool = True
    pin_share: float = 0.5

    def __post_init__(self) -> None:
        layers = len(self.num_experts)
        for name in ("counts", "pinned_order", "curves"):
            if len(getattr(self, name)) != layers:
                raise ProfileError(
                    f"profile field {name!r} has {len(getattr(self, name))} layers, "
                    f"num_experts has {layers}"
                )
        for i, (counts, experts) in enumerate(zip(self.counts, self.num_experts, strict=True)):
            if len(counts) != experts:
                raise ProfileError(f"profile field 'counts' layer {i}: {len(counts)} != {experts}")
        for i, ids in enumerate(self.pinned_order):
            if any(not 0 <= e < self.num_experts[i] for e in ids):
                raise ProfileError(f"profile field 'pinned' layer {i}: expert id out of range")
        for i, curve in enumerate(self.curves):
            if not curve:
                raise ProfileError(f"profile field 'curves' layer {i} is empty")
        if self.policy not in moe_core.POLICIES:
            raise ProfileError(
                f"profile field 'policy': {self.policy!r} is none of {', '.join(moe_core.POLICIES)}"
            )
        if not 0 <= self.pin_share <= 0.5:
            raise ProfileError(f"profile field 'pin_share': {self.pin_share} is outside 0..0.5")

    # -- making ----------------------------------------------------------------------------------
    @classmethod
    def from_trace(
        cls,
        trace: Trace,
        *,
        total_slots: int | None = None,
        source: Mapping[str, Any] | None = None,
        policy: str | None = None,
        points: int = 12,
        presence: float = 0.9,
        choose: bool = True,
    ) -> Profile:
        """Measure a profile on a trace. With `total_slots`, the per-layer budget for that total
        is stored too and the pinned set is capped for it; else pinned is capped per layer at
        half its experts and `pinned_for(capacities)` trims it to a session's capacities.

        With `choose` (and no `policy` given), the cache settings come from `select` on the
        trace: kept only where they beat the defaults on its held-out last third. Without,
        the profile uses `policy` (or the default), spreads its slots and pins up to half."""
        chosen, selection = Choice(policy or DEFAULT_POLICY, True, 0.5), None
        if choose and policy is None and trace.num_steps >= MIN_SELECT_STEPS:
            selection = select(trace)
            chosen = selection.chosen
        policy = chosen.policy
        budget = None
        if total_slots is None:
            curves = hit_curves(trace, policy=policy, points=points)
        else:
            caps, curves = measure_budget(trace, total_slots, policy=policy, points=points)
            budget = tuple(caps)
        pinned = choose_pinned(trace, budget or trace.num_experts, presence=presence)
        made = {
            "tokens": trace.num_tokens,
            "steps": trace.num_steps,
            "segments": [s.name for s in trace.segments],
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **({"selection": selection.as_json()} if selection else {}),
            **(source or {}),
        }
        return cls(
            fingerprint=trace.fingerprint,
            num_experts=tuple(trace.num_experts),
            top_k=trace.top_k,
            counts=tuple(tuple(int(x) for x in c) for c in trace.counts()),
            pinned_order=tuple(tuple(pinned[i]) for i in range(trace.num_layers)),
            curves=tuple(tuple((int(c), int(h)) for c, h in curve) for curve in curves),
            source=made,
            policy=policy,
            total_slots=total_slots,
            budget=budget,
            spread_slots=chosen.spread,
            pin_share=chosen.pin_share,
        )

    # -- using -----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.num_experts)

    @property
    def pinned(self) -> dict[int, list[int]]:
        return {i: list(ids) for i, ids in enumerate(self.pinned_order) if ids}

    def pinned_for(self, capacities: Sequence[int]) -> dict[int, list[int]]:
        """The pinned set trimmed to fit a session's slots per layer."""
        self._check_layers(capacities)
        out = {}
        for i, (ids, cap) in enumerate(zip(self.pinned_order, capacities, strict=True)):
            take = list(ids[: min(pin_limit(cap, self.top_k), int(self.pin_share * cap))])
            if take:
                out[i] = take
        return out

    def hot(self, layer: int, n: int) -> list[int]:
        """The `n` most selected experts of `layer`, most selected first (never-selected omitted)."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} is outside 0..{self.num_layers - 1}")
        counts = np.asarray(self.counts[layer])
        order = np.argsort(-counts, kind="stable")[:n]
        return order[counts[order] > 0].tolist()

    def warm(self, capacities: Sequence[int]) -> dict[int, list[int]]:
        """Per layer, the hottest experts that fill its capacity: what to prefetch at start."""
        self._check_layers(capacities)
        return {i: self.hot(i, cap) for i, cap in enumerate(capacities)}

    def capacities(self, total_slots: int) -> list[int]:
        """Slots per layer for a total, by marginal hits per slot on the stored hit curves."""
        if self.budget is not None and total_slots == self.total_slots:
            return list(self.budget)
        if total_slots >= sum(self.num_experts):
            return list(self.num_experts)
        mins = [min(self.top_k, e) for e in self.num_experts]
        try:
            return allocate_from_curves([list(c) for c in self.curves], total_slots, min_slots=mins)
        except ValueError as e:
            raise ProfileError(str(e)) from None

    def spread(self, plan: moe_core.Plan) -> moe_core.Plan:
        """`plan` with its slots spread over the layers as the hit curves say: the same total of
        slots, no layer above its experts or below what one token needs (nor below the plan's
        own), and no more expert bytes in all than the plan holds (layers' experts may differ in
        size, so moving a slot between layers can cost bytes). Unchanged when the profile's
        selection found that spreading did not pay on held-out traffic."""
        if not self.spread_slots:
            return plan
        experts, sizes = plan.num_experts, plan.expert_bytes
        floor = [min(max(1, self.top_k), e, p) for e, p in zip(experts, plan.capacity, strict=True)]
        caps = [
            min(max(int(c), lo), e)
            for c, lo, e in zip(self.capacities(sum(plan.capacity)), floor, experts, strict=True)
        ]
        while sum(c * b for c, b in zip(caps, sizes, strict=True)) > plan.slot_bytes:
            # Take a slot back from the layer furthest above its share in the plan.
            over = [i for i in range(len(caps)) if caps[i] > floor[i]]
            caps[max(over, key=lambda i: (caps[i] - plan.capacity[i], sizes[i]))] -= 1
        return dataclasses.replace(
            plan,
            capacity=tuple(caps),
            reason=f"{plan.reason}; spread over the layers by the profile",
        )

    def check(self, fingerprint: str) -> None:
        """Raise unless this profile was made for the model with `fingerprint`."""
        if fingerprint != self.fingerprint:
            raise ProfileError(
                f"profile is for model {self.fingerprint}, not for this model {fingerprint}"
            )

    def _check_layers(self, capacities: Sequence[int]) -> None:
        if len(capacities) != self.num_layers:
            raise ProfileError(
                f"{len(capacities)} capacities for a profile of {self.num_layers} MoE layers"
            )

    # -- files -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "num_experts": list(self.num_experts),
            "top_k": self.top_k,
            "policy": self.policy,
            "spread": self.spread_slots,
            "pin_share": self.pin_share,
            "source": dict(self.source),
            "counts": [list(c) for c in self.counts],
            "pinned": {str(i): list(ids) for i, ids in enumerate(self.pinned_order) if ids},
            "curves": [[list(p) for p in c] for c in self.curves],
            "budget": None
            if self.budget is None
            else {"total_slots": self.total_slots, "capacities": list(self.budget)},
        }

    @classmethod
    def from_json(cls, doc: Any, *, where: str = "profile") -> Profile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ProfileError(f'{where}: not a moe profile (no "format": "{FORMAT}")')
        if doc.get("version") != VERSION:
            raise ProfileError(
                f"{where}: profile version {doc.get('version')!r} is not supported "
                f"(this moe-profiles reads version {VERSION})"
            )
        missing = [name for name in _REQUIRED if name not in doc]
        if missing:
            raise ProfileError(f"{where}: missing field {', '.join(map(repr, missing))}")
        try:
            num_experts = tuple(int(e) for e in doc["num_experts"])
            pinned = {int(k): tuple(int(e) for e in v) for k, v in doc["pinned"].items()}
            budget = doc.get("budget")
            return cls(
                fingerprint=str(doc["fingerprint"]),
                num_experts=num_experts,
                top_k=int(doc["top_k"]),
                counts=tuple(tuple(int(x) for x in c) for c in doc["counts"]),
                pinned_order=tuple(pinned.get(i, ()) for i in range(len(num_experts))),
                curves=tuple(tuple((int(c), int(h)) for c, h in curve) for curve in doc["curves"]),
                source=dict(doc["source"]),
                policy=str(doc.get("policy", "lfuda")),
                spread_slots=bool(doc.get("spread", True)),
                pin_share=float(doc.get("pin_share", 0.5)),
                total_slots=None if budget is None else int(budget["total_slots"]),
                budget=None if budget is None else tuple(int(c) for c in budget["capacities"]),
            )
        except ProfileError as e:
            raise ProfileError(f"{where}: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ProfileError(f"{where}: malformed field ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> Path:
        """Write atomically (`moe_core.atomic_write`): all of it, or the old file stays."""
        path = Path(path)
        with moe_core.atomic_write(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{path}: no such profile") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"{path}: corrupt profile, not valid JSON ({e})") from None
        return cls.from_json(doc, where=str(path))


def find_profile(fingerprint: str, *, dirs: Sequence[str | Path] = ()) -> Profile | None:
    """The profile for a model: from `dirs` first, then those shipped with moe-profiles."""
    name = f"{fingerprint}.json"
    for directory in dirs:
        candidate = Path(directory) / name
        if candidate.is_file():
            profile = Profile.load(candidate)
            profile.check(fingerprint)
            return profile
    shipped = resources.files("moe_profiles") / "profiles" / name
    if shipped.is_file():
        profile = Profile.from_json(
            json.loads(shipped.read_text()), where=f"moe_profiles/profiles/{name}"
        )
        profile.check(fingerprint)
        return profile
    return None
