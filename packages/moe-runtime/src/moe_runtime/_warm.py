"""Warm start: how often each expert was chosen (per MoE layer) and the resident set, saved when
a session closes; the next start of the same model with the same capacity, profile and package
versions loads the most chosen experts, up to each layer's slots, before the first request.

Counts carry over from start to start, halved each time, so the warm set follows recent use.

The state also keeps each layer's last steps (the experts of each, the window moe-core compares
with Belady's optimum) and the cache policy used. Without a policy given or a profile, the next
start chooses its policy on those steps (`moe_profiles.select`: fitted on their first two
thirds) and keeps the one used before unless another beat it on their last third.

The file is written atomically (`moe_core.atomic_write`). A
file that does not parse, or whose key does not match, means a cold start and one warning.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import moe_core

from ._versions import package_versions

FORMAT = 3
_FORMATS = (1, 2, 3)  # format 1 had the resident set only, 2 no recent steps nor policy
# Fewer recent steps than this per layer are too few to hold a third out and choose on.
MIN_CHOOSE_STEPS = 96


class WarmStartWarning(UserWarning):
    """A warm-start file was ignored; the session started cold."""


@dataclass(frozen=True, slots=True)
class WarmKey:
    fingerprint: str
    capacity: tuple[int, ...]
    profile: str | None  # digest of the profile file, if one was given
    versions: tuple[tuple[str, str], ...]

    def as_json(self) -> dict:
        return {**asdict(self), "capacity": list(self.capacity), "versions": dict(self.versions)}


def make_key(fingerprint: str, capacity: list[int], profile: str | None) -> WarmKey:
    return WarmKey(fingerprint, tuple(capacity), profile, tuple(package_versions().items()))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe"


def state_path(cache_dir: Path, key: WarmKey) -> Path:
    return cache_dir / "warm" / f"{key.fingerprint}.json"


@dataclass(frozen=True, slots=True)
class WarmState:
    resident: list[list[int]]  # per MoE layer, the experts resident at close
    counts: list[list[int]] | None  # per MoE layer and expert, times chosen (decayed)
    recent: list[list[list[int]]] | None = None  # per MoE layer, its last steps' experts
    policy: str | None = None  # the cache policy the session used


def choose_policy(state: WarmState, capacity: list[int], num_experts: list[int]):
    """Choose the cache policy on the saved recent steps: fitted on their first two thirds,
    kept only if it beats the policy used before on their last third (`moe_profiles.select`,
    at this session's slots). None when too few steps were saved."""
    if not state.recent:
        return None
    steps = min(len(layer) for layer in state.recent)
    if steps < MIN_CHOOSE_STEPS:
        return None
    import moe_profiles

    # Each step's distinct experts, as that many one-expert rows: what the cache sees of it.
    trace = moe_profiles.Trace.from_steps(
        [
            [np.asarray(s, dtype=np.int64)[:, None] for s in layer[-steps:]]
            for layer in state.recent
        ],
        num_experts,
    )
    current = moe_profiles.Choice(state.policy or moe_core.DEFAULT_POLICY)
    return moe_profiles.select(
        trace, current=current, pin_shares=(0.0,), spreads=(False,), fractions=(list(capacity),)
    )


class UsageCounter:
    """An observer (`handle.observe`) counting how often each expert of each layer is chosen.
    It only counts, so layers holding all their experts count on the device, without a sync."""

    def __init__(self, num_experts: list[int], start: list[list[int]] | None = None) -> None:
        self.counts = [np.zeros(n, dtype=np.int64) for n in num_experts]
        for counts, old in zip(self.counts, start or [], strict=False):
            counts += np.asarray(old, dtype=np.int64) // 2  # older use weighs half

    def on_counts(self, layer: int, counts: np.ndarray) -> None:
        self.counts[layer] += counts[: self.counts[layer].size]

    def as_lists(self) -> list[list[int]]:
        return [c.tolist() for c in self.counts]


def warm_set(state: WarmState, capacity: list[int], pinned: list[set[int]]) -> dict[int, list[int]]:
    """Per layer, the experts to load: most chosen first (resident at close breaks ties), as
    many as the layer's unpinned slots, never one that was not used."""
    out = {}
    for layer, (cap, pins, resident) in enumerate(
        zip(capacity, pinned, state.resident, strict=True)
    ):
        was = set(resident)
        if state.counts is None:  # format 1: the resident set is all there is
            counts, used = {}, sorted(was)
        else:
            counts = dict(enumerate(state.counts[layer]))
            used = [e for e, c in counts.items() if c > 0 or e in was]
        used.sort(key=lambda e: (-counts.get(e, 0), e not in was, e))
        ids = [e for e in used if e not in pins][: max(0, cap - len(pins))]
        if ids:
            out[layer] = ids
    return out


def prefetch_all(handle, layers: dict[int, list[int]], threads: int = 8) -> int:
    """Load every layer's experts in one batch: layers at once, so the reads overlap instead of
    waiting for one layer at a time. Each call touches its own layer's cache only."""
    if not layers:
        return 0
    items = list(layers.items())
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return sum(pool.map(lambda item: prefetch_layer(handle, *item), items))


def prefetch_layer(handle, layer: int, ids: list[int]) -> int:
    """Make all of `ids` resident in `layer` (they must fit next to its pinned experts).

    moe-core's prefetch protects only the experts it loads: making room, it may evict one of
    `ids` that was already resident. Pinning those for the moment keeps the whole set."""
    pinned = handle.pinned()[layer]
    resident = handle.resident()[layer]
    keep = [e for e in ids if e in resident and e not in pinned]
    missing = [e for e in ids if e not in resident]
    if not missing:
        return 0
    if keep:
        handle.pin({layer: keep})
    try:
        return handle.prefetch({layer: missing})
    finally:
        if keep:
            handle.unpin({layer: keep})


def load_state(path: Path, key: WarmKey, num_experts: list[int]) -> WarmState | None:
    """The saved state, or None (no file: silently; a bad one: one warning)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") not in _FORMATS:
            raise ValueError(
                f"unknown format {data.get('format') if isinstance(data, dict) else data!r}"
            )
        if data.get("key") != key.as_json():
            raise ValueError(f"saved for another setup ({_difference(data.get('key'), key)})")
        resident = data["resident"]
        _check_resident(resident, key.capacity, num_experts)
        counts = data.get("counts")
        if data["format"] >= 2:
            _check_counts(counts, num_experts)
        recent, policy = data.get("recent"), data.get("policy")
        if data["format"] >= 3:
            _check_recent(recent, num_experts)
            if policy not in moe_core.POLICIES:
                raise ValueError(f"unknown cache policy {policy!r}")
        return WarmState(resident, counts, recent, policy)
    except Exception as e:  # corrupt in any way: start cold, say so once
        # At the session's caller (this, WarmStart, Session, the caller).
        warnings.warn(
            f"ignoring warm-start state {path}: {e}; starting cold", WarmStartWarning, stacklevel=4
        )
        return None


def save_state(
    path: Path,
    key: WarmKey,
    resident: list[set[int]],
    counts: list[list[int]],
    stats: dict,
    *,
    recent: list[list[np.ndarray]],
    policy: str,
) -> None:
    data = {
        "format": FORMAT,
        "key": key.as_json(),
        "resident": [sorted(ids) for ids in resident],
        "counts": counts,
        "recent": [[np.asarray(s).tolist() for s in layer] for layer in recent],
        "policy": policy,
        "stats": stats,
    }
    with moe_core.atomic_write(path, "w") as f:
        json.dump(data, f)


class WarmStart:
    """One session's warm start: the state saved for its setup (read once, at the start), the
    counter of what its requests choose, and the save at close. `info` says what the start took
    from saved state, so results that depend on it can be traced (`Session.stats`). Disabled, it
    reads, counts and saves nothing."""

    def __init__(
        self,
        fingerprint: str,
        plan: moe_core.Plan,
        *,
        enabled: bool = True,
        profile: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.path: Path | None = None
        self.key: WarmKey | None = None
        self.usage: UsageCounter | None = None
        self.info: dict[str, Any] = {
            "enabled": enabled,
            "path": None,
            "restored": False,
            "prefetched": 0,
        }
        self._state: WarmState | None = None
        if not enabled:
            return
        digest = None
        if profile is not None:
            from ._profile import profile_digest

            digest = profile_digest(profile)
        self.key = make_key(fingerprint, list(plan.capacity), digest)
        self.path = state_path(Path(cache_dir or default_cache_dir()), self.key)
        self.info["path"] = str(self.path)
        self._state = load_state(self.path, self.key, list(plan.num_experts))

    def policy(self, plan: moe_core.Plan) -> str | None:
        """The cache policy the saved recent steps choose (`choose_policy`), or None."""
        if self._state is None:
            return None
        selection = choose_policy(self._state, list(plan.capacity), list(plan.num_experts))
        if selection is None:
            return None
        chosen, current = selection.row(selection.chosen), selection.row(selection.current)
        self.info["selection"] = {
            "policy": selection.chosen.policy,
            "accepted": selection.accepted,
            "before": selection.current.policy,
            "held_out": chosen.held_out,
            "held_out_before": current.held_out,
            "held_out_belady": chosen.held_out_belady,
        }
        return selection.chosen.policy

    def start(self, handle, *, prefetched: int = 0) -> None:
        """Before the first request, after the warm-up (which is not counted): count what the
        requests choose, beside any other observer (moe_profiles.TraceRecorder), and load the
        experts the saved state says are used most, all layers in one batch. `prefetched`:
        experts a profile loaded already, counted with these."""
        self.info["prefetched"] += prefetched
        if self.path is None:
            return
        state, self._state = self._state, None  # read once
        self.usage = UsageCounter(handle.num_experts, state.counts if state else None)
        handle.observe(self.usage)
        if state is not None:
            layers = warm_set(state, handle.capacity, handle.pinned())
            self.info["prefetched"] += prefetch_all(handle, layers)
            self.info["restored"] = True

    def save(self, handle) -> Path | None:
        """Write expert use counts and the resident set for the next start."""
        if self.path is None:
            return None
        handle.flush_counts()
        summary = {k: v for k, v in handle.stats().items() if k not in ("layers", "budget")}
        assert self.usage is not None and self.key is not None  # set with the path
        save_state(
            self.path,
            self.key,
            handle.resident(),
            self.usage.as_lists(),
            summary,
            recent=handle.recent(),
            policy=summary["policy"],
        )
        return self.path


def _check_counts(counts, num_experts: list[int]) -> None:
    if not isinstance(counts, list) or len(counts) != len(num_experts):
        raise ValueError(f"counts for {_len(counts)} layers, the model has {len(num_experts)}")
    for layer, (row, experts) in enumerate(zip(counts, num_experts, strict=True)):
        if not isinstance(row, list) or len(row) != experts:
            raise ValueError(f"layer {layer}: counts for {_len(row)} experts, it has {experts}")
        if not all(isinstance(c, int) and c >= 0 for c in row):
            raise ValueError(f"layer {layer}: counts must be non-negative integers")


def _check_recent(recent, num_experts: list[int]) -> None:
    if not isinstance(recent, list) or len(recent) != len(num_experts):
        raise ValueError(
            f"recent steps for {_len(recent)} layers, the model has {len(num_experts)}"
        )
    for layer, (steps, experts) in enumerate(zip(recent, num_experts, strict=True)):
        if not isinstance(steps, list) or not all(isinstance(s, list) and s for s in steps):
            raise ValueError(f"layer {layer}: recent steps are not lists of expert ids")
        if any(not isinstance(e, int) or not 0 <= e < experts for s in steps for e in s):
            raise ValueError(f"layer {layer}: a recent step's expert id is out of range")


def _check_resident(resident, capacity: tuple[int, ...], num_experts: list[int]) -> None:
    if not isinstance(resident, list) or len(resident) != len(num_experts):
        raise ValueError(
            f"resident sets for {_len(resident)} layers, the model has {len(num_experts)}"
        )
    for layer, (ids, cap, experts) in enumerate(zip(resident, capacity, num_experts, strict=True)):
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ValueError(f"layer {layer}: resident set is not a list of expert ids")
        if len(ids) > cap or len(set(ids)) != len(ids):
            raise ValueError(f"layer {layer}: {len(ids)} resident experts for {cap} slots")
        if any(i < 0 or i >= experts for i in ids):
            raise ValueError(f"layer {layer}: expert id out of range 0..{experts - 1}")


def _difference(saved, key: WarmKey) -> str:
    if not isinstance(saved, dict):
        return "no key"
    now = key.as_json()
    fields = [name for name in now if saved.get(name) != now[name]]
    return ", ".join(fields) + " differ" if fields else "key differs"


def _len(value) -> int | str:
    return len(value) if isinstance(value, list) else "no"
