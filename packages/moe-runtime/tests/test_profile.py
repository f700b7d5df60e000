"""A routing profile at session start: per-layer capacities from the same total of slots, pinned
experts, hot experts prefetched, a profile of another checkpoint refused. moe-profiles' `Profile`
is stood in for by a small class with the same interface, so this tests the runtime's side."""

from __future__ import annotations

import json

import pytest

import moe_profiles
from moe_runtime import Session


class ProfileError(Exception):
    pass


class FakeProfile:
    def __init__(self, data: dict) -> None:
        self.fingerprint = data["fingerprint"]
        self.pinned = {int(k): v for k, v in data["pinned"].items()}
        self._weights = data["weights"]
        self._counts = data["counts"]

    @classmethod
    def load(cls, path):
        return cls(json.loads(open(path).read()))

    def check(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise ProfileError(f"profile is for {self.fingerprint}, the model is {fingerprint}")

    def capacities(self, total_slots: int) -> list[int]:
        total = sum(self._weights)
        caps = [total_slots * w // total for w in self._weights]
        caps[0] += total_slots - sum(caps)
        return caps

    def hot(self, layer: int, n: int) -> list[int]:
        counts = self._counts[layer]
        return sorted(range(len(counts)), key=lambda e: -counts[e])[:n]


@pytest.fixture
def profile_file(checkpoint, tmp_path, monkeypatch):
    import moe_core

    monkeypatch.setattr(moe_profiles, "Profile", FakeProfile, raising=False)
    path = checkpoint("qwen3_moe")
    counts = [[(e * 7 + layer) % 16 for e in range(16)] for layer in range(4)]
    data = {
        "fingerprint": moe_core.fingerprint(path),
        "pinned": {"0": [3], "1": [7], "2": [5, 6]},
        "weights": [2, 1, 2, 1],
        "counts": counts,
    }
    file = tmp_path / "profile.json"
    file.write_text(json.dumps(data))
    return path, file, data


def test_profile_sets_capacities_pins_and_prefetches(ref, profile_file, tmp_path):
    path, file, data = profile_file
    with Session(path, capacity=6, profile=file, cache_dir=tmp_path) as s:
        assert s.handle.capacity == [8, 4, 8, 4]  # 24 slots spread 2:1:2:1
        pinned = s.handle.pinned()
        # Layer 1 has no slot beyond the 4 a token needs: its pin is left out.
        assert pinned == [{3}, set(), {5, 6}, set()]
        resident = s.handle.resident()
        hot1 = set(FakeProfile(data).hot(1, 4))
        assert resident[1] == hot1
        assert s.stats()["session"]["warm_start"]["prefetched"] > 0
        messages = [{"role": "user", "content": "hello"}]
        assert ref.run(s, messages, 8) == ref.tokens(path, messages, 8)
    # The warm-start state is keyed by the profile too: the same profile restores it.
    with Session(path, capacity=6, profile=file, cache_dir=tmp_path) as s:
        assert s.stats()["session"]["warm_start"]["restored"]


def test_profile_of_another_model_is_refused(profile_file, tmp_path):
    path, file, data = profile_file
    file.write_text(json.dumps({**data, "fingerprint": "f" * 16}))
    with pytest.raises(ProfileError, match="profile is for"):
        Session(path, capacity=6, profile=file, cache_dir=tmp_path)
