"""A routing profile at session start: per-layer capacities from the same total of slots, pinned
experts, hot experts prefetched, a profile of another checkpoint refused. moe-profiles' `Profile`
is stood in for by a small class with the same interface, so this tests the runtime's side."""

from __future__ import annotations

import json
from pathlib import Path

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
        self.top_k = data["top_k"]
        self.policy = data["policy"]
        self.spread_slots = True

    @classmethod
    def load(cls, path):
        return cls(json.loads(Path(path).read_text()))

    def check(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise ProfileError(f"profile is for {self.fingerprint}, the model is {fingerprint}")

    def capacities(self, total_slots: int) -> list[int]:
        total = sum(self._weights)
        caps = [total_slots * w // total for w in self._weights]
        caps[0] += total_slots - sum(caps)
        return caps

    spread = moe_profiles.Profile.spread  # the plan's slots spread by `capacities`

    def pinned_for(self, capacities: list[int]) -> dict[int, list[int]]:
        out = {}
        for layer, ids in self.pinned.items():
            take = ids[: moe_profiles.pin_limit(capacities[layer], self.top_k)]
            if take:
                out[layer] = take
        return out

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
        "top_k": 4,
        "counts": counts,
        "policy": "s3fifo",
    }
    file = tmp_path / "profile.json"
    file.write_text(json.dumps(data))
    return path, file, data


def test_profile_sets_capacities_pins_and_prefetches(ref, profile_file, tmp_path):
    path, file, data = profile_file
    with Session(path, capacity=6, profile=file, cache_dir=tmp_path) as s:
        assert s.handle.capacity == [8, 4, 8, 4]  # 24 slots spread 2:1:2:1
        assert s.stats()["policy"] == "s3fifo"  # the policy the profile chose
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


def test_a_policy_given_overrides_the_profiles_and_the_default_applies_without_one(
    profile_file, tmp_path
):
    import moe_core

    path, file, _ = profile_file
    with Session(path, capacity=6, profile=file, policy="lru", warm_start=False) as s:
        assert s.stats()["policy"] == "lru"
    with Session(path, capacity=6, warm_start=False, cache_dir=tmp_path) as s:
        assert s.stats()["policy"] == moe_core.DEFAULT_POLICY


def test_profile_of_another_model_is_refused(profile_file, tmp_path):
    path, file, data = profile_file
    file.write_text(json.dumps({**data, "fingerprint": "f" * 16}))
    with pytest.raises(ProfileError, match="profile is for"):
        Session(path, capacity=6, profile=file, cache_dir=tmp_path)


# -- a real profile, measured on a trace of the same fixture --------------------------------------

PROMPTS = [
    [{"role": "user", "content": "hello how are you today"}],
    [{"role": "user", "content": "the cat sat on the mat"}],
    [{"role": "user", "content": "what is your name"}],
]


@pytest.fixture(scope="module")
def real_profile(checkpoint, tmp_path_factory):
    """A moe_profiles.Profile made from a recorded trace of this fixture's routing."""
    path = checkpoint("qwen3_moe")
    out = tmp_path_factory.mktemp("profile")
    with Session(path, capacity=16, warm_start=False, cache_dir=out) as s:
        recorder = moe_profiles.TraceRecorder.attach(s.handle, fingerprint=s.fingerprint, top_k=4)
        for i, prompt in enumerate(PROMPTS):
            recorder.segment(f"p{i}")
            s.generate(prompt, max_tokens=16)
        profile = moe_profiles.Profile.from_trace(recorder.trace())
    return path, profile.save(out / "profile.json"), profile


def first_misses(path, cache_dir, tokens: int, **kw) -> int:
    with Session(path, capacity=6, warm_start=False, cache_dir=cache_dir, **kw) as s:
        s.generate(PROMPTS[0], max_tokens=tokens)
        return s.stats()["misses"]


def test_a_profile_means_fewer_misses_over_the_first_tokens(ref, real_profile, tmp_path):
    path, file, profile = real_profile
    without = first_misses(path, tmp_path, 8)
    with_profile = first_misses(path, tmp_path, 8, profile=file)
    assert with_profile < without
    with Session(path, capacity=6, profile=file, warm_start=False, cache_dir=tmp_path) as s:
        assert sum(s.handle.capacity) == 24 and s.handle.capacity == profile.capacities(24)
        assert ref.run(s, PROMPTS[1], 8) == ref.tokens(path, PROMPTS[1], 8)


@pytest.fixture
def steady_backend(tmp_path):
    """A CPU backend whose process memory stays put, so two sessions plan alike; MLX's limits
    (which a memory budget sets) are put back afterwards."""
    import mlx.core as mx

    import moe_core

    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 25000000 kB\nMemAvailable: 20000000 kB\n")
    (proc / "self" / "status").write_text("VmRSS:\t51200 kB\nVmHWM:\t51200 kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    memory = mx.get_memory_limit()
    cache = mx.set_cache_limit(mx.get_memory_limit())
    yield moe_core.CPUBackend(proc=proc, cgroup=tmp_path / "cgroup")
    mx.set_memory_limit(memory)
    mx.set_cache_limit(cache)


def test_profile_capacities_under_a_memory_budget(ref, real_profile, tmp_path, steady_backend):
    import moe_core

    path, file, profile = real_profile
    kw = dict(warm_start=False, cache_dir=tmp_path, backend=steady_backend, prompt_cache_memory=0)
    with Session(path, capacity=6, **kw) as probe:
        b = probe.handle.plan
        fixed = b.base_bytes + b.dense_bytes + b.scratch_bytes + b.reserve_bytes
        per_slot = sum(b.expert_bytes)
        expert_bytes = b.expert_bytes
    memory = fixed + 6 * per_slot + per_slot // 2  # room for 6 slots in every layer
    plain = moe_core.Plan
    with Session(path, memory=memory, **kw) as s:
        uniform = s.handle.capacity
        assert uniform == [6] * 4
    with Session(path, memory=memory, profile=file, **kw) as s:
        caps = s.handle.capacity
        budget = s.handle.plan
        assert isinstance(budget, plain) and budget.memory == memory
        assert "by the profile" in budget.reason
        assert sum(caps) == sum(uniform) and caps == profile.capacities(sum(uniform))
        assert caps != uniform  # the profile moved slots between layers
        assert all(4 <= c <= 16 for c in caps)
        used = sum(c * e for c, e in zip(caps, expert_bytes, strict=True))
        assert used <= sum(c * e for c, e in zip(uniform, expert_bytes, strict=True))
        assert ref.run(s, PROMPTS[2], 8) == ref.tokens(path, PROMPTS[2], 8)


def test_profile_pins_at_most_half_the_slots(profile_file, tmp_path):
    path, file, data = profile_file
    data = dict(data, pinned={"0": list(range(12))})
    file.write_text(json.dumps(data))
    with Session(path, capacity=12, profile=file, cache_dir=tmp_path) as s:
        assert s.handle.capacity[0] == 16
        # Pinning all but top_k slots (12) left the cache too few; the profile's own limit is half.
        assert s.handle.pinned()[0] == set(range(8))
