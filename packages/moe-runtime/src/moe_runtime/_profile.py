"""Using a routing profile (moe-profiles) at session start: per-layer capacities, pinned experts,
and the hot experts to load before the first request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import moe_profiles


def load_profile(path: str | Path, fingerprint: str):
    """Load a profile and refuse it when it was made for another checkpoint."""
    profile = moe_profiles.Profile.load(path)
    profile.check(fingerprint)  # raises moe_profiles.ProfileError naming both fingerprints
    return profile


def profile_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def profile_capacity(profile, slots_per_layer: int, layers: int) -> list[int]:
    """Spread the same total number of slots over the layers as the profile's budgets say."""
    return [max(1, int(c)) for c in profile.capacities(slots_per_layer * layers)]


def apply_profile(handle, profile, top_k: int) -> int:
    """Pin the profile's pinned experts (leaving `top_k` slots free per layer so a step can always
    load what it needs) and prefetch the hottest others; returns how many experts were read."""
    capacity = handle.capacity
    pins = {}
    for layer, ids in profile.pinned.items():
        room = max(0, capacity[layer] - top_k)
        if room and ids:
            pins[layer] = list(ids)[:room]
    if pins:
        handle.pin(pins)
    pinned = handle.pinned()
    hot = {}
    for layer, cap in enumerate(capacity):
        free = cap - len(pinned[layer])
        ids = [e for e in profile.hot(layer, cap) if e not in pinned[layer]][:free]
        if ids:
            hot[layer] = ids
    return handle.prefetch(hot)
